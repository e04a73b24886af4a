"""Thin glue between params.yaml, the `spd` library and Ray / MLflow / DVC: one module per stage."""
