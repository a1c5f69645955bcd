"""Small synthetic datasets in the standard layouts, deterministic from a seed, for the
tests, the demo and anyone who wants to see a config run end to end in minutes:

* :mod:`pale_mm.synthetic.coco` -- COCO instance segmentation layout (mmdet).
* :mod:`pale_mm.synthetic.ade` -- ADE20K layout (mmseg).
* :mod:`pale_mm.synthetic.imagenet` -- ImageNet folder layout (mmpretrain).

``tools/make_synthetic_data.py`` writes one and prints the ``--cfg-options`` that point a
config at it (:mod:`pale_mm.synthetic.cfg_options`).
"""
