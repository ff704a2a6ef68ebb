"""Constants shared by the stream, the packer, the model's loss and evaluation.

A module of its own, importing nothing, so that the model (``anymodal.model``) and the stream
(``anymodal.stream``) can share them without the model importing the stream and, through it,
the tokenizer registry.
"""

#: the label of a position that is not trained on (no next token, a prompt token, padding);
#: -100 is ``torch.nn.functional.cross_entropy``'s default ``ignore_index``
IGNORE = -100

#: the tokenizer-spec key of a continuous tokenizer's learned-query resampler (a model option,
#: not the tokenizer's: ``{name: image.patch, resample: {queries: 16}}``; anymodal.model.resampler)
RESAMPLE_KEY = "resample"
#: key suffix of a resampled tokenizer's side tensor of input (t, h, w) coordinates
#: (``vectors[name + GRID_SUFFIX]``, (M, 3) int64; anymodal.model.resampler)
GRID_SUFFIX = "@grid"
