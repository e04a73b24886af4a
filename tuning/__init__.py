"""Ray Tune search of the SPD loss weights λ."""
