"""The copying experiment of ``simulations/copying`` as a Flower app."""
