"""Every label and tooltip of the MedGen3D widget, in one table."""

TOOLTIPS = {
    "model_name": "A model bundled with the plugin (demo: thoracic phantom; brain-mri: T1 brain "
    "MRI; headneck-ct: head-and-neck CT), or 'Other file…' to use the file below.",
    "model_file": "A model checkpoint (.pt). Picking masks.pt, images.pt or refiner.pt loads "
    "the whole model folder it sits in.",
    "device": "Where generation runs. auto prefers a CUDA GPU, then Apple MPS, then the CPU.",
    "load": "Load the model and show what it holds.",
    "seed": "Random seed. The same seed, settings and device give the same result.",
    "depth": "Number of axial slices to generate (at least the model's sequence length).",
    "samples": "How many pairs to generate; sample i uses a seed derived from (seed, i).",
    "sampler": "Denoising sampler: ddim or rflow are fast; ddpm takes every training step.",
    "steps": "Denoising steps per sequence: fewer is faster, more is more faithful.",
    "fill_holes": "Background left enclosed by structures in a generated slice takes the "
    "nearest structure's label (set from the model; painted slices are never changed).",
    "min_island": "Once the volume is generated, pieces of a structure smaller than this "
    "many voxels take their neighbours' labels; 0 keeps every piece (set from the model; "
    "painted slices are never changed).",
    "overlap": "Slices each generated mask sequence shares with those generated before it "
    "(set from the model): more tells a sequence more of how far a structure has come, and "
    "is slower.",
    "redraws": "Draw a mask again, up to this many times, while it fails the anatomy check "
    "against the model's training masks (a structure missing, far too large, in pieces or "
    "broken from slice to slice); 0 keeps the first. Completed seeds are never redrawn.",
    "strength": "How much the refiner may change the image: 0 keeps it as generated, "
    "1 re-draws it entirely from the mask.",
    "refine_steps": "Denoising steps of the refiner.",
    "refine_sampler": "The refiner's sampler; auto picks the one it was trained for "
    "(rectified flow or DDIM).",
    "guidance": "Classifier-free guidance of the refiner: 1 is plain conditional sampling; "
    "higher follows the masks more closely and costs twice the time per step.",
    "label_map": "How the Labels layer's values translate onto the model's table for "
    "'Generate image from masks': the model's own (its table, or its training data's "
    "convention such as raw DLMUSE), a shipped mapping (FreeSurfer, TotalSegmentator), or a "
    "file of 'source target' lines.",
    "label_map_file": "A label-mapping file: one 'source target' pair per line.",
    "labels_layer": "The Labels layer to generate from, complete, or use as the mask.",
    "image_layer": "The Image layer to refine.",
    "generate_pair": "Generate masks, then the image, then refine it (all stages).",
    "generate_masks": "Generate label volumes only.",
    "complete": "Treat the painted slices of the Labels layer as known and generate the "
    "slices around them; painted slices stay exactly as painted.",
    "image_from_masks": "Generate an image aligned with the chosen Labels layer.",
    "refine": "Refine the chosen Image layer with the chosen Labels layer as condition.",
    "regenerate": "After editing a generated mask: regenerate the image only where slices "
    "changed (plus the neighbours needed for continuity).",
    "cancel": "Stop the running job after the current step; the layers stay as they were.",
    "export_dir": "Folder to export the current pair into.",
    "volume_3d": "In 3D, show the images as volume renderings beside the organ surfaces.",
    "progress": "Progress of the running job; Cancel beside it stops it between steps.",
    "window": "Contrast of the chosen Image layer: auto is the soft-tissue window for CT and "
    "the 1st-99.5th percentiles for MRI; or a CT window (soft tissue, lung, bone, brain).",
    "export_format": "NIfTI: image, label map and JSON sidecar. DICOM: a CT or MR series and "
    "a DICOM SEG with the label names and colours, marked synthetic, for PACS, 3D Slicer or "
    "OHIF.",
    "export": "Write the chosen image and labels in the format chosen above.",
    "radiological": "Show slices as radiology viewers do: anterior (in coronal and sagittal "
    "views, superior) up and the patient's right on the screen's left. Unticked: napari's "
    "array convention, first axis down and second to the right. The 3D view is not affected.",
    "contours": "Show labels as contours instead of filled regions.",
    "segmenter": "Optional: segmenter.pt from `medgen3d evaluate`, to check that the image "
    "shows the mask's anatomy (alignment Dice).",
    "check": "Check the chosen pair: each label's median intensity against the model's "
    "training range and, with a segmenter, the alignment Dice (as `medgen3d check`).",
    "toggle_3d": "Switch the viewer between 2D slices and 3D rendering.",
}
