"""Data layer: synthetic humans (synth), raw readers (lip, atr, iuv, imageio), letterbox packing
(letterbox, prepare, packed) and the training Dataset (dataset). Targets live in targets.py."""
