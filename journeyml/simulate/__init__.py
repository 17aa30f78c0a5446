"""The journey simulator: a multi-channel customer world with ground truth.

``journeyml simulate`` writes an event log that follows the event contract, a customers table,
every logged policy decision, and the ground truth that models and policies are scored against.
The same world runs any policy from Python, so policies can be compared by their true value::

    from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
    from journeyml.simulate.policy import NONE, fixed_policy
    from journeyml.simulate.run import simulate
    from journeyml.simulate.world import load_world

    world, journey = load_world(), load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    _, baseline = simulate(world, journey, 5000, 180, seed=1, truth=None, policy=fixed_policy(NONE))
    _, offers = simulate(world, journey, 5000, 180, seed=1, truth=None,
                         policy=fixed_policy(world.action_index("discount_offer")))
    offers.value()["net_value_per_customer"] - baseline.value()["net_value_per_customer"]

Runs with the same seed share their customers and random numbers, so such differences are
paired and have little noise.

Modules: :mod:`~journeyml.simulate.world` (the world's configuration),
:mod:`~journeyml.simulate.engine` (population, latent state and the daily step),
:mod:`~journeyml.simulate.policy` (the policy API and built-in policies),
:mod:`~journeyml.simulate.render` (events and their timestamps),
:mod:`~journeyml.simulate.truth` (Monte Carlo ground truth and the label definitions),
:mod:`~journeyml.simulate.run` (the run and its outputs), :mod:`~journeyml.simulate.cli`.

Nothing is imported here, so importing the command stays cheap.
"""
