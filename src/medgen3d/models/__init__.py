"""Networks of the three stages, each built from a checked config dict (never from a class
name stored in a file): the mask diffusion model (MC-DPM), the image sequence generator and
the semantic diffusion refiner."""
