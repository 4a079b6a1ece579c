"""Alignment: band registration (:mod:`.registration`), fusion of every product onto the
reference grid (:mod:`.fusion`), the on-disk cache of fused scenes (:mod:`.cache`: the one
reader and writer of its arrays, manifest and shifts) and label masks on the cache's grid
(:mod:`.masks`). Imports only :mod:`spectraseg.data` among the pipeline stages."""
