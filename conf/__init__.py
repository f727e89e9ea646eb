"""detector's Hydra configs, shipped as package data (``detector.conf``) so an installed detector finds them."""
