"""The method's three stages, one home each.

* **Stage 1, masks** (:mod:`medgen3d.stages.masks`): MC-DPM, multi-label mask sequences by
  diffusion with position and known-slice conditions, chained into whole volumes.
* **Stage 2, images** (:mod:`medgen3d.stages.images`): the image sequence generator, a
  SPADE network that turns a mask sequence (and the slices before it) into images.
* **Stage 3, refiner** (:mod:`medgen3d.stages.refiner`): the semantic diffusion refiner,
  SDEdit with a mask-conditioned diffusion model over slices.

Each stage owns its network config (a frozen :class:`~medgen3d.stages.config.NetworkConfig`),
its network, its inference wrapper (``from_checkpoint``) and its array-level progress
generator (``sample_mask_volume``, ``generate_images``, ``refine_volume``). The diffusion
glue both diffusion stages use is :mod:`medgen3d.diffusion`; training mirrors this layout in
:mod:`medgen3d.train` (``masks``, ``images``, ``refiner`` over one loop); chaining stages on
volumes is :mod:`medgen3d.generate`'s job alone.
"""
