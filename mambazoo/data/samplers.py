"""timm's repeated-augmentation sampler (DeiT's RASampler) for mmengine dataloaders."""
from __future__ import annotations

from mmengine.dist import get_dist_info
from mmengine.registry import DATA_SAMPLERS
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler

__all__ = ["RepeatAugSampler"]


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """``timm.data.distributed_sampler.RepeatAugSampler`` with mmengine's sampler arguments.

    Each image is drawn ``num_repeats`` times per epoch, the copies going to different ranks
    (each augments its copy differently), and each rank keeps
    ``floor(len / selected_round) * selected_round / world_size`` indices, so an epoch is as
    long as without repeats; the DeiT/Vim ImageNet recipe (``--repeated-aug``, on by default
    there). Like that recipe, which uses it only for distributed runs, a single process gets
    a plain shuffle of the whole dataset. The order depends only on ``seed + epoch``
    (mmengine's ``DistSamplerSeedHook`` calls ``set_epoch``), so resumed runs see the same order.

    Args:
        dataset: the dataset (from the dataloader config).
        shuffle: shuffle before repeating.
        seed: added to the epoch for the shuffle generator (mmengine passes the run's seed).
        num_repeats, selected_round: as in timm.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int | None = None, num_repeats: int = 3,
                 selected_round: int = 256) -> None:
        rank, world_size = get_dist_info()
        if world_size == 1:
            num_repeats, selected_round = 1, 0
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                         num_repeats=num_repeats, selected_round=selected_round)
        self.seed = seed or 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed + epoch)
