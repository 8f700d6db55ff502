"""ShoufaChen/CycleMLP @ 4e062a03e875d8dc4fbdd5dec96a918494705d38: the CycleMLP network (`cycle_mlp.py`)."""
