"""Training loaders: each sample's augmentation depends on (seed, epoch, image) only, so the number of
loader processes (`num_workers = "auto"` differs from machine to machine) never changes a model."""

import torch

from labelgen.config import TrainCamParams
from labelgen.data.manifest import ImageRecord
from labelgen.data.training import (
    TaggedImages,
    epoch_seed,
    loader_workers,
    seed_everything,
    start_epoch,
    training_loader,
)
from labelgen.models.pixels import pixel_stats
from labelgen.stages.train_cam import MODEL, training_transform
from labelgen.store.checkpoint import load_checkpoint
from tests.conftest import COCO128
from tests.test_train_cam import _train, manifest  # noqa: F401  (the demo manifest fixture)

SEED = 7


def _photos(n: int) -> TaggedImages:
    """Real COCO photos through the reference augmentation (RandAugment, random erasing, crops, flips)."""
    paths = sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[:n]
    records = [ImageRecord(p.stem, str(p), 0, 0, (1 + i % 3,), None, "train", "") for i, p in enumerate(paths)]
    params = TrainCamParams(input_size=64)
    return TaggedImages(records, 3, training_transform(params, *pixel_stats(params.backbone, params.weights)), 10**8)


def _batches(num_workers: str, epochs: tuple[int, ...]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    loader = training_loader(_photos(12), 4, num_workers, SEED, torch.device("cpu"))
    out = []
    for epoch in epochs:
        start_epoch(loader, SEED, epoch)
        out.append(list(loader))
    return out


def test_batches_do_not_depend_on_the_number_of_loader_processes():
    in_process, two_processes = _batches("0", (0, 1)), _batches("2", (0, 1))
    for epoch_a, epoch_b in zip(in_process, two_processes, strict=True):
        assert len(epoch_a) == 3
        for (images_a, tags_a), (images_b, tags_b) in zip(epoch_a, epoch_b, strict=True):
            assert torch.equal(images_a, images_b) and torch.equal(tags_a, tags_b)
    assert not torch.equal(in_process[0][0][0], in_process[1][0][0])  # a new epoch draws anew


def test_a_resumed_epoch_repeats_the_uninterrupted_one():
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_batches("0", (0, 1))[1], _batches("0", (1,))[0], strict=True))


def test_loading_in_process_leaves_the_training_stream_alone():
    """Dropout and drop-path draw from the training process's generators; in-process loading must
    not move them, or a model would depend on the number of loader processes after all."""
    seed_everything(epoch_seed(SEED, 0))
    expected = torch.rand(5)
    loader = training_loader(_photos(8), 4, "0", SEED, torch.device("cpu"))
    start_epoch(loader, SEED, 0)
    list(loader)
    assert torch.equal(torch.rand(5), expected)


def test_num_workers_setting():
    assert loader_workers("3") == 3
    assert 0 <= loader_workers("auto") <= 16


def test_cam_training_gives_the_same_weights_with_and_without_loader_processes(tmp_path, manifest):  # noqa: F811
    weights = []
    for workers in ("0", "2"):
        out = tmp_path / workers
        out.mkdir()
        _train(out, manifest, 1, f'train_cam.num_workers="{workers}"')
        weights.append(load_checkpoint(out / MODEL)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
