"""The stages of a round, one module each; each is a function of its own typed inputs, the models and
artifacts it reads, and paths (its seed is part of its inputs). Only synpo.iterate reads the recipe."""
