"""The tiny settings the end-to-end tests search with: NACHOS on digits (TINY), ZO-DARTS+ on toy data
(ZODARTS_TINY), and the archive fields that differ between two runs of the same search (VOLATILE)."""
from edgenas.search.driver import SearchConfig
from edgenas.search.evaluate import EvaluationConfig
from edgenas.train.exits import ExitTrainingConfig
from edgenas.train.finetune import FinetuneConfig
from edgenas.train.supernet import SupernetConfig

TINY = SearchConfig(dataset="digits", pop_size=4, n_gen=2,
                    supernet=SupernetConfig(steps=12, batch_size=128, n_random=1, lr_warmup_steps=2),
                    evaluation=EvaluationConfig(exits=ExitTrainingConfig(epochs=4, support_from_epoch=2), bn_batches=2),
                    finetune=FinetuneConfig(steps=20, optimizer="auto"))
ZODARTS_TINY = dict(C=4, N=1, resolution=8, batch_size=16, window=2, retrain_epochs=2, retrain_batch_size=32)
VOLATILE = ("eval_seconds",)


def stable(records):
    """records without their VOLATILE fields: what must match between two runs."""
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]
