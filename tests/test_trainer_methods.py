"""The torch backend's building blocks: partial-label loss, DG objectives, SSL objectives,
network topology. Each test checks what the method's definition says it does."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

from xds.trainers.dg import (  # noqa: E402
    ERM,
    IBERM,
    GroupDRO,
    RandConv,
    SpectralDecoupling,
    VREx,
    ib_penalty,
    make_objective,
)
from xds.trainers.losses import PartialDiceCELoss  # noqa: E402
from xds.trainers.network import PenultimateFeatures, build_unet, topology  # noqa: E402
from xds.trainers.ssl import (  # noqa: E402
    UAMTConsistency,
    cps_loss,
    ema_update,
    linear_rampup,
    sigmoid_rampup,
)


def _case(seed=0, b=2, c=3, shape=(6, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((b, c, *shape), generator=g)
    target = torch.randint(0, c, (b, *shape), generator=g)
    return logits, target


def test_full_labels_give_cross_entropy_plus_soft_dice():
    logits, target = _case()
    loss = PartialDiceCELoss(3)(logits, target)
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none").mean((1, 2, 3))
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    inter = (probs * onehot).sum((2, 3, 4))
    dice = (2 * inter + 1e-5) / (probs.sum((2, 3, 4)) + onehot.sum((2, 3, 4)) + 1e-5)
    assert torch.allclose(loss, ce + 1 - dice[:, 1:].mean(1), atol=1e-5)


def test_a_class_a_sample_does_not_annotate_cannot_be_penalized():
    logits, target = _case(c=3)
    target[target == 2] = 0  # sample labels only class 1; class 2 voxels look like background
    annotated = torch.tensor([[True, True, False], [True, True, False]])
    loss = PartialDiceCELoss(3)
    before = loss(logits, target, annotated)
    # move all background probability to the unannotated class 2: nothing to learn there
    moved = logits.clone()
    moved[:, 2] = torch.logaddexp(logits[:, 0], logits[:, 2])
    moved[:, 0] = -30.0
    after = loss(moved, target, annotated)
    assert torch.allclose(before, after, atol=1e-4)
    # with full annotation the same move is a large error
    assert (loss(moved, target) > loss(logits, target) + 0.5).all()


def test_ignored_voxels_count_in_neither_term():
    logits, target = _case()
    loss = PartialDiceCELoss(3, ignore_index=255)
    marked = target.clone()
    marked[:, :3] = 255
    changed = logits.clone()
    changed[:, :, :3] = torch.randn_like(changed[:, :, :3]) * 10
    assert torch.allclose(loss(logits, marked), loss(changed, marked), atol=1e-5)


def test_groupdro_upweights_the_worst_group():
    dro = GroupDRO(3, eta=0.5)
    groups = torch.tensor([0, 0, 1, 2])
    losses = torch.tensor([2.0, 2.0, 0.5, 0.1])
    for _ in range(5):
        objective = dro(losses, groups)
    q = dro.q
    assert q[0] > q[1] > q[2]
    assert torch.isclose(q.sum(), torch.tensor(1.0))
    assert torch.isclose(objective, (q * torch.tensor([2.0, 0.5, 0.1])).sum())
    # absent groups keep their weight and add nothing
    before = dro.q.clone()
    dro(torch.tensor([1.0]), torch.tensor([1]))
    assert dro.q[1] / dro.q[2] > before[1] / before[2]
    assert "q" in dro.state_dict()  # resumes from checkpoints


def test_vrex_penalizes_the_variance_of_group_risks():
    vrex = VREx(2, beta=10.0)
    groups = torch.tensor([0, 0, 1, 1])
    equal = vrex(torch.tensor([1.0, 1.0, 1.0, 1.0]), groups)
    assert torch.isclose(equal, torch.tensor(1.0))
    unequal = vrex(torch.tensor([0.0, 0.0, 2.0, 2.0]), groups)
    assert torch.isclose(unequal, torch.tensor(1.0 + 10.0 * 1.0))  # mean 1, variance 1
    # the gradient pulls the group risks together: up on the low group, down on the high one
    losses = torch.tensor([0.0, 0.0, 2.0, 2.0], requires_grad=True)
    vrex(losses, groups).backward()
    assert (losses.grad[:2] < 0).all()
    assert (losses.grad[2:] > 0).all()


def test_iberm_penalizes_feature_variance_within_groups():
    groups = torch.tensor([0, 1])
    constant = torch.ones(2, 4, 3, 3, 3)
    assert ib_penalty(constant, groups) == 0
    noisy = torch.randn(2, 4, 3, 3, 3)
    objective = IBERM(2, lam=2.0)(torch.tensor([1.0, 3.0]), groups, noisy)
    assert torch.isclose(objective, 2.0 + 2.0 * ib_penalty(noisy, groups))
    assert ib_penalty(noisy, groups) > 0


def test_spectral_decoupling_penalizes_squared_logits():
    logits = torch.full((1, 2, 2, 2, 2), 3.0)
    objective = SpectralDecoupling(lam=0.5)(torch.tensor([1.0]), logits=logits)
    assert torch.isclose(objective, torch.tensor(1.0 + 0.5 * 9.0))
    assert ERM()(torch.tensor([1.0, 3.0])) == 2.0
    assert isinstance(make_objective("Group-DRO", 3), GroupDRO)
    with pytest.raises(ValueError, match="unknown DG method"):
        make_objective("mixup", 2)


def test_randconv_changes_intensities_not_geometry():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(2, 1, 16, 16, 16)
    image[:, :, 4:12, 4:12, 4:12] = 1.0
    image += 0.01 * torch.randn(image.shape, generator=g)
    out = RandConv(sizes=(1,), p=1.0)(image, generator=g)
    assert out.shape == image.shape
    assert not torch.allclose(out, image)
    # a 1x1x1 random convolution maps intensities one-to-one: the object stays where it was
    inside = out[:, :, 5:11, 5:11, 5:11].mean((1, 2, 3, 4))
    outside = out[:, :, :2].mean((1, 2, 3, 4))
    assert ((inside - outside).abs() > 0.3).all()
    # the mean and std of each image are kept
    assert torch.allclose(out.mean((1, 2, 3, 4)), image.mean((1, 2, 3, 4)), atol=1e-4)
    assert RandConv(p=0.0)(image).equal(image)


def test_ema_teacher_follows_the_student():
    student = torch.nn.Linear(3, 2)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.99)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        assert torch.allclose(t, 0.99 * b + 0.01 * s)


def test_uamt_consistency_is_masked_by_teacher_uncertainty():
    uamt = UAMTConsistency(n_classes=2, passes=4, noise=0.0)
    student = torch.zeros(1, 2, 4, 4, 4)
    teacher = torch.zeros(1, 2, 4, 4, 4)
    teacher[:, 0] = 10.0  # confident: background everywhere
    t_probs = teacher.softmax(1)
    uncertainty = torch.zeros(1, 4, 4, 4)
    loss = uamt(student, t_probs, uncertainty, epoch=50)
    assert loss > 0
    assert uamt(teacher, t_probs, uncertainty, epoch=50) < 1e-6  # agreement costs nothing
    uncertain = torch.full((1, 4, 4, 4), math.log(2))  # maximal entropy: masked out
    assert uamt(student, t_probs, uncertain, epoch=50) == 0
    # teacher passes: the mean of softmaxes and its entropy
    net = torch.nn.Conv3d(1, 2, 1)
    mean, entropy = uamt.teacher_probs(net, torch.randn(1, 1, 4, 4, 4))
    assert torch.allclose(mean.sum(1), torch.ones(1, 4, 4, 4))
    assert (entropy >= 0).all()
    assert (entropy <= math.log(2) + 1e-6).all()


def test_cps_supervises_each_network_with_the_others_hard_labels():
    a = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    b = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    loss = cps_loss(a, b)
    expected = torch.nn.functional.cross_entropy(
        a, b.argmax(1)
    ) + torch.nn.functional.cross_entropy(b, a.argmax(1))
    assert torch.isclose(loss, expected)
    loss.backward()
    assert a.grad is not None
    assert b.grad is not None
    agree = torch.zeros(1, 3, 2, 2, 2)
    agree[:, 1] = 20.0
    assert cps_loss(agree, agree.clone()) < 1e-6


def test_rampups():
    assert sigmoid_rampup(0) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50) == 1.0
    assert sigmoid_rampup(80) == 1.0
    assert linear_rampup(25) == 0.5


def test_unet_topology_respects_anisotropy_and_runs():
    kernels, strides = topology((16, 64, 64), (3.0, 1.25, 1.25))
    assert strides[1] == [1, 2, 2]  # 3 mm is more than twice 1.25 mm: no pooling along it
    assert kernels[0] == [1, 3, 3]
    assert any(s[0] == 2 for s in strides)  # once in-plane spacing catches up, it pools too
    net = build_unet(1, 3, (16, 32, 32), (3.0, 1.25, 1.25), base_features=4)
    hook = PenultimateFeatures(net)
    out = net(torch.randn(1, 1, 16, 32, 32))
    assert out.shape == (1, 3, 16, 32, 32)
    assert hook.value.shape[0] == 1
    assert hook.value.shape[2:] == (16, 32, 32)


def test_synthetic_mix_renders_images_from_the_patch_labels():
    from xds.trainers.synthmix import SyntheticMix

    target = torch.zeros(3, 20, 20, 12, dtype=torch.long)
    target[:, 3:10, 4:12, 2:8] = 1
    target[:, 12:18, 5:15, 4:10] = 2
    image = torch.randn(3, 1, 20, 20, 12)
    mixed, labels, changed = SyntheticMix(p=1.0, seed=3)(image, target)
    assert changed.all()
    assert not torch.allclose(mixed, image)
    assert labels.shape == target.shape
    for i in range(3):
        x, y = mixed[i, 0], labels[i]
        assert abs(float(x.mean())) < 1e-4  # z-scored like real patches
        assert abs(float(x.std()) - 1) < 1e-3
        # the image is drawn from its label map: labels explain most of its variance
        means = torch.stack([x[y == k].mean() for k in y.unique()])
        counts = torch.stack([(y == k).sum() for k in y.unique()]).float()
        between = float((counts * means**2).sum() / counts.sum())
        assert between > 0.5 * float(x.var(unbiased=False))
        assert set(y.unique().tolist()) <= {0, 1, 2}
    untouched, same, none = SyntheticMix(p=0.0)(image, target)
    assert not none.any()
    assert untouched is image
    with pytest.raises(ValueError, match="synthetic-mix"):
        SyntheticMix(p=1.5)
