"""Face models: output shapes, feature sizes, tap-layer names, the evaluator's own resize,
pretrained initialisation (key mapping, SHA-256 refusal), GMI's 64x64 colour prior, BiDO taps."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from mi_bench.config import compose
from mi_bench.errors import ArtifactError
from mi_bench.models import build_model
from mi_bench.registry import DEFENSES
from mi_bench.train import Taps

# name -> (width, input side, feature dim, hidden layers)
FACE_MODELS = {
    "vgg16_bn": (1.0, 64, 2048, ("block1", "block2", "block3", "block4", "bn")),
    "facenet64": (1.0, 64, 512, ("body.2", "body.6", "body.20", "body.23", "output_layer")),
    "ir152": (1.0, 64, 512, ("body.2", "body.10", "body.46", "body.49", "output_layer")),
    "facenet": (1.0, 64, 512, ("body.2", "body.6", "body.20", "body.23", "output_layer")),
    "ir18": (0.25, 32, 128, ("body.1", "body.3", "body.5", "body.7", "output_layer")),
}


@pytest.mark.parametrize("name", sorted(FACE_MODELS))
def test_face_model_shapes_and_tap_layers(name):
    width, side, dim, layers = FACE_MODELS[name]
    torch.manual_seed(0)
    m = build_model(name, num_classes=7, in_channels=3, width=width).eval()
    assert m.feature_dim == dim and tuple(m.hidden_layers) == layers
    assert isinstance(m.head, torch.nn.Linear) and m.head.in_features == dim
    taps = Taps(m, list(m.hidden_layers))
    x = torch.rand(2, 3, side, side)
    with torch.no_grad():
        logits, feat = m(x), m.embed(x)
    taps.remove()
    assert logits.shape == (2, 7) and feat.shape == (2, dim)
    assert set(taps.outputs) == set(layers)
    assert taps.outputs[layers[-1]].shape == (2, dim)  # the last tap is the feature itself
    if name == "vgg16_bn":  # pooled blocks 1-4 at 64x64: 64x32x32 ... 512x4x4
        assert [tuple(taps.outputs[f"block{b}"].shape[1:]) for b in range(1, 5)] == [
            (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
        assert not m.bn.bias.requires_grad  # the official "no shift" BatchNorm


def test_published_feature_layer_sizes():
    vgg = build_model("vgg16_bn", num_classes=1000, in_channels=3, width=1.0)
    assert sum(p.numel() for n, p in vgg.named_parameters() if n.startswith("block")) == 14_723_136
    f64 = build_model("facenet64", num_classes=1000, in_channels=3, width=1.0)
    assert f64.output_layer[3].weight.shape == (512, 512 * 4 * 4)
    f112 = build_model("facenet", num_classes=1000, in_channels=3, width=1.0)
    assert f112.output_layer[3].weight.shape == (512, 512 * 7 * 7)
    assert len(f64.body) == 24 and len(build_model("ir152", num_classes=2, in_channels=3, width=0.125).body) == 50


def test_facenet_evaluator_resizes_its_own_input_to_112():
    m = build_model("facenet", num_classes=3, in_channels=3, width=0.125).eval()
    seen = []
    m.input_layer.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        a = m(torch.rand(2, 3, 64, 64))
        b = m(torch.rand(2, 3, 112, 112))
    assert seen == [(112, 112), (112, 112)] and a.shape == b.shape == (2, 3)


def test_grey_input_and_width_scaling():
    m = build_model("vgg16_bn", num_classes=4, in_channels=1, width=0.25)
    assert m(torch.rand(3, 1, 32, 32)).shape == (3, 4) and m.feature_dim == 128 * 4


# -- pretrained weights --------------------------------------------------------------------------

def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretrained_loads_matching_tensors_after_the_hash_check(tmp_path):
    torch.manual_seed(1)
    src = build_model("ir18", num_classes=5, in_channels=3, width=0.125)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    m = build_model("ir18", num_classes=9, in_channels=3, width=0.125, pretrained=str(f),
                    pretrained_sha256=_sha(f), what="target")
    assert torch.equal(m.input_layer[0].weight, src.input_layer[0].weight)
    assert m.init_report["fresh_tensors"] == 2  # the 9-way head has other shapes: left random
    assert m.init_report["sha256"] == _sha(f)


def test_pretrained_hash_mismatch_missing_hash_and_foreign_file_are_refused(tmp_path):
    src = build_model("ir18", num_classes=5, in_channels=3, width=0.125)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    kw = dict(num_classes=5, in_channels=3, width=0.125, what="target")
    with pytest.raises(ArtifactError, match=r"target.pretrained=.* has SHA-256 [0-9a-f]{64}, not the expected"):
        build_model("ir18", pretrained=str(f), pretrained_sha256="0" * 64, **kw)
    with pytest.raises(ArtifactError, match=f"set target.pretrained_sha256={_sha(f)}"):
        build_model("ir18", pretrained=str(f), pretrained_sha256="", **kw)
    with pytest.raises(ArtifactError, match="no such file"):
        build_model("ir18", pretrained=str(tmp_path / "nope.pt"), pretrained_sha256="0" * 64, **kw)
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(other))
    with pytest.raises(ArtifactError, match="shares no tensor"):
        build_model("ir18", pretrained=str(other), pretrained_sha256=_sha(other), **kw)


def test_torchvision_and_official_key_names_map_onto_the_face_models():
    from torchvision.models.vgg import cfgs, make_layers  # vgg16_bn's features, without its head

    tv = {f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=True).state_dict().items()}
    tv["classifier.0.weight"] = torch.zeros(4096, 25088)
    m = build_model("vgg16_bn", num_classes=10, in_channels=3, width=1.0)
    own = m.state_dict()
    mapped = m.adapt_pretrained(tv)
    conv_bn = {k: v for k, v in mapped.items() if k.startswith("block")}
    assert len(conv_bn) == len(tv) - 1 and all(own[k].shape == v.shape for k, v in conv_bn.items())
    assert set(conv_bn) == {k for k in own if k.startswith("block")}
    # KED-MI / BiDO checkpoints: module.feature.N / layerB.J / fc_layer
    ked = m.adapt_pretrained({"module.feature.3.weight": torch.zeros(64, 64, 3, 3),
                              "module.fc_layer.weight": torch.zeros(10, 2048),
                              "layer2.0.weight": torch.zeros(128, 64, 3, 3)})
    assert set(ked) == {"block1.3.weight", "head.weight", "block2.0.weight"}
    ir = build_model("facenet64", num_classes=10, in_channels=3, width=0.125)
    got = ir.adapt_pretrained({"module.feature.body.0.res_layer.1.weight": 1, "module.fc_layer.bias": 2,
                               "module.output_layer.3.weight": 3})
    assert set(got) == {"body.0.res_layer.1.weight", "head.bias", "output_layer.3.weight"}
    assert set(got) <= set(ir.state_dict())  # face.evoLVe names are ours


def test_pretrained_config_keys_and_the_record_statement():
    cfg = compose(["dataset=lfw", "target.pretrained=/w/vgg16_bn.pth", "target.pretrained_sha256=ab"])
    from mi_bench.weights import init_statement

    assert init_statement(cfg.target).startswith("pretrained: /w/vgg16_bn.pth (sha256 ab)")
    assert init_statement(cfg.evaluator) == "from scratch (random initialisation)"


# -- attacks and defenses on faces ------------------------------------------------------------------

def test_gmi_colour_prior_at_64x64_trains_and_inverts():
    from mi_bench.attacks.gmi import GMI
    from mi_bench.runtime import NULL_BARS

    cfg = GMI.Config(name="gmi", gan_width=8, gan_steps=2, n_critic=1, gan_batch_size=4,
                     iterations=2, restarts=2, samples_per_class=1)
    atk = GMI(cfg, image_shape=(3, 64, 64), num_classes=3, device=torch.device("cpu"))
    prior = atk.train_prior(torch.rand(16, 3, 64, 64), None, seed=0, progress=NULL_BARS)
    g, d = atk._nets()
    assert g(torch.randn(2, 100)).shape == (2, 3, 64, 64) and d(torch.rand(2, 3, 64, 64)).shape == (2,)
    target = build_model("vgg16_bn", num_classes=3, in_channels=3, width=0.125).eval()
    inv = atk.invert(target, prior, [0, 2], seed=0, progress=NULL_BARS)
    assert inv.images.shape == (2, 1, 3, 64, 64) and 0 <= float(inv.images.min()) <= float(inv.images.max()) <= 1
    # at the published width, the published CelebA networks (methods.md): 512*4*4 -> ... -> 3
    g64, d64 = GMI(GMI.Config(name="gmi", gan_width=64), image_shape=(3, 64, 64), num_classes=3,
                   device=torch.device("cpu"))._nets()
    assert g64.fc[0].weight.shape == (512 * 16, 100)
    convs = [mod for mod in d64.body if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512] and d64.out.weight.shape == (1, 512, 4, 4)


def test_bido_taps_vgg16_published_points_and_face_yaml_uses_the_pk_sampler():
    cfg = compose(["dataset=lfw", "defense=bido", "preset=smoke"])
    assert cfg.target.sampler == "pk" and cfg.target.batch_size // cfg.target.pk_classes >= 2
    paper = compose(["dataset=celeba", "defense=bido", "preset=paper"])
    assert (paper.target.sampler, paper.target.pk_classes, paper.target.batch_size) == ("pk", 16, 64)
    bido = DEFENSES.get("bido")(cfg.defense, num_classes=4, input_shape=(3, 32, 32))
    m = build_model("vgg16_bn", num_classes=4, in_channels=3, width=0.125)
    assert bido.tap_layers(m) == ["block1", "block2", "block3", "block4", "bn"]


@pytest.mark.parametrize("attack", ["gmi", "kedmi", "plgmi"])
def test_cpu_preset_gives_every_attack_cpu_sized_settings(attack):
    cfg = compose(["dataset=lfw", "preset=cpu", f"attack={attack}"])
    assert cfg.dataset.image_size == 32 and cfg.dataset.face.max_per_identity == 60
    assert cfg.target.model == "vgg16_bn" and cfg.evaluator.model == "ir18"
    assert cfg.attack.gan_steps <= 2000  # not the paper-scale default
    quick = compose(["dataset=lfw", "preset=quick", f"attack={attack}"])
    assert quick.dataset == cfg.dataset and quick.target == cfg.target  # quick = cpu on lfw


def test_hflip_flips_a_random_part_of_each_batch_and_nothing_when_off():
    from mi_bench.interfaces import Defense, LossOutput
    from mi_bench.train import TrainConfig, train_classifier

    class Recorder(Defense):
        seen: list = []

        def compute_loss(self, batch):
            Recorder.seen.append(batch.x.detach().clone())
            ce = torch.nn.functional.cross_entropy(batch.logits, batch.y)
            return LossOutput(ce, {"ce": float(ce.detach())})

    x = torch.rand(16, 3, 8, 8)  # asymmetric images: a flip is never the identity
    y = torch.arange(16) % 2
    make = lambda: build_model("ir18", num_classes=2, in_channels=3, width=0.125)  # noqa: E731
    rows = {bytes(r.numpy().tobytes()): "orig" for r in x}
    rows.update({bytes(r.flip(-1).numpy().tobytes()): "flip" for r in x})
    for hflip in (False, True):
        Recorder.seen = []
        train_classifier(make, (x, y), (x[:2], y[:2]), TrainConfig(epochs=2, batch_size=8, hflip=hflip),
                         seed=0, defense=Recorder(None, num_classes=2, input_shape=(3, 8, 8)))
        kinds = [rows[bytes(r.numpy().tobytes())] for b in Recorder.seen for r in b]
        assert len(kinds) == 32
        assert set(kinds) == ({"orig", "flip"} if hflip else {"orig"})
