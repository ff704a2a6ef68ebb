"""Stage-1 (alignment) data: the synthetic captions (:mod:`anymodal.data.synthetic.captions`) as a
LightningDataModule, so ``recipes/stage1-align.yaml`` writes its own data like the demo does."""

from __future__ import annotations

from anymodal.data.synthetic.captions import FOLDER, CaptionConfig, synthesize_captions
from anymodal.train.data import AnyModalDataModule


class CaptionDataModule(AnyModalDataModule):
    """:class:`~anymodal.train.data.AnyModalDataModule` over the caption manifests
    ``root/captions/{train,val}.jsonl``, which ``prepare_data`` writes first when ``captions`` is
    set (skipped if an identical set is there).

    Args:
        root: data folder (the captions go to ``root/captions``).
        captions: what to write (``None``: use the manifests already there), e.g.
            ``{train: 2000, val: 50, test: 100}``.
        seq_len, batch_size, num_workers, cache, val_limit: as in ``AnyModalDataModule``.
    """

    def __init__(self, root: str = "runs/stages/data", captions: CaptionConfig | None = None, seq_len: int = 512,
                 batch_size: int = 32, num_workers: int = 0, cache: bool = True, val_limit: int | None = None):
        super().__init__(root=root, train=f"{FOLDER}/train.jsonl", val=f"{FOLDER}/val.jsonl", synthetic=None,
                         seq_len=seq_len, batch_size=batch_size, num_workers=num_workers, cache=cache,
                         val_limit=val_limit)
        self.captions = captions

    def prepare_data(self):
        if self.captions is not None:
            synthesize_captions(self.root, self.captions)
