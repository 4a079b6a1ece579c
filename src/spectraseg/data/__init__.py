"""Data: the DSTL dataset layout (:mod:`.dstl`), atomic output files (:mod:`.files`), grid
and pixel geometry (:mod:`.geometry`), dataset inspection (:mod:`.inspection`) and synthetic
DSTL-format datasets (:mod:`.synth`). The lowest pipeline layer: it imports no other stage."""
