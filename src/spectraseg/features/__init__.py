"""Features: per-channel normalisation (:mod:`.normalization`), spectral indices
(:mod:`.indices`), windows of scenes (:mod:`.windows`), scene splits and folds by region
(:mod:`.split`) and the model's inputs, random training patches and whole normalised scenes
(:mod:`.patches`). Imports :mod:`spectraseg.data` and :mod:`spectraseg.align`."""
