"""Feature views: journey activity, journey state, experience, customer profile."""

from _catalog import objects

journey_activity = objects().views["journey_activity"]
journey_state = objects().views["journey_state"]
journey_experience = objects().views["journey_experience"]
customer_profile = objects().views["customer_profile"]
