"""The customer entity."""

from _catalog import objects

customer = objects().customer
