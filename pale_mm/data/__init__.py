"""Small synthetic datasets in the standard layouts, deterministic from a seed, for the
tests, the demo and anyone who wants to see a config run end to end in minutes:

* :mod:`pale_mm.data.synthetic_coco` -- COCO instance segmentation layout (mmdet).
* :mod:`pale_mm.data.synthetic_ade` -- ADE20K layout (mmseg).
"""
