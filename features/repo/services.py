"""One FeatureService per model version, shared by training and serving."""

from _catalog import objects

churn_v1 = objects().services["churn_v1"]
conversion_v1 = objects().services["conversion_v1"]
next_step_v1 = objects().services["next_step_v1"]
