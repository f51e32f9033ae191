"""Layer thickness from a label volume: per-A-scan maps, the fovea, the ETDRS grid, outputs.

- :mod:`.columns`: thickness of each layer and of the retina in every A-scan.
- :mod:`.fovea`: the fovea, given or found as the minimum of the smoothed retinal thickness.
- :mod:`.etdrs`: the nine ETDRS sectors: which A-scans fall in each, how much of each is covered.
- :mod:`.report`: everything above for one volume, as JSON and CSV.
- :mod:`.maps`: en-face heat maps (PNG + .npy); :mod:`.profile`: line and circle scan profiles.
"""
