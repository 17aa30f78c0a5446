"""The snapshot source written by ``journeyml features build``."""

from _catalog import objects

journey_features_source = objects().source
