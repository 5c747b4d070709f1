"""Registry of pretrained networks behind the feature stores.

Each entry wraps the library researchers use (torchvision, open_clip, transformers,
pymoten) rather than network code of our own: the library builds the architecture, loads
its published weights from its usual cache and supplies the model's own preprocessing.
Layers are read with the library's own mechanism: torchvision's
``create_feature_extractor``, transformers' ``output_hidden_states`` and the residual
blocks of open_clip's image and text towers.

Adding a network is one call::

    register_network(Network(
        name="resnet18", library="torchvision", modality="image",
        layers=("layer1", "layer2", "layer3", "layer4", "avgpool"),
        builder=torchvision_builder("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
        weight_files=torchvision_weight_files("ResNet18_Weights.IMAGENET1K_V1"),
    ))

A :class:`Loaded` network maps a batch to ``{layer: tensor}``; tensors are
``(batch, features)``, ``(batch, channels, height, width)`` (conv maps) or
``(batch, tokens, channels)`` (transformer hidden states). :func:`layer_views` turns each
into the flat ``(batch, feature)`` readout and the ``(batch, token, channel)`` view the
store keeps for readouts that attend over positions.

Weights are never downloaded here: the builders read them from the cache that
:mod:`brainpipe.features.weights` fills and verifies (``HF_HUB_OFFLINE=1`` is set for the
hub-backed libraries while building).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainpipe.errors import BrainpipeInputError

Modality = Literal["image", "text", "video"]
Readout = Literal["flatten", "cls", "mean"]


@dataclass(frozen=True)
class WeightFile:
    """One published weight file and where its library looks for it.

    Attributes
    ----------
    path : Path
        Absolute path the library loads from (inside ``features.weights_dir`` or the
        library's usual cache).
    url : str
        Where the publisher serves it.
    checksum : str
        ``"sha256:<hex>"`` (full digest), ``"sha256-prefix:<hex>"`` (torch hub's
        convention: the file name carries the first hex digits of its SHA-256) or
        ``"git-sha1:<hex>"`` (the hub's id of a small, non-LFS file).
    """

    path: Path
    url: str
    checksum: str


@dataclass
class Loaded:
    """A network built and ready to run.

    Attributes
    ----------
    module : torch.nn.Module
        The library's model (eval mode).
    preprocess : callable
        One stimulus (PIL image, caption string or video path) → what ``collate`` stacks;
        runs on the loader workers.
    collate : callable
        List of preprocessed items → the batch ``forward`` takes.
    forward : callable
        ``(batch, layers, device) -> {layer: tensor}``, batch moved to ``device`` inside.
    readouts : dict
        Default flat readout per layer kind (``"cls"`` for ViT hidden states).
    """

    module: Any
    preprocess: Callable[[Any], Any]
    collate: Callable[[list[Any]], Any]
    forward: Callable[[Any, Sequence[str], Any], dict[str, Any]]
    readouts: dict[str, Readout] = field(default_factory=dict)


Builder = Callable[[bool, Path | None, int], Loaded]
"""``builder(pretrained, weights_dir, seed) -> Loaded``; random init (seeded) if not pretrained."""


@dataclass(frozen=True)
class Network:
    """A registry entry.

    Attributes
    ----------
    name : str
        Registry key (``features.networks.<label>.network`` in the config).
    library : str
        Library that builds and loads it.
    modality : {"image", "text", "video"}
        Stimulus column it reads: ``image`` (file or HDF5 row), ``caption``, ``video``.
    layers : tuple of str
        Layers that can be read (the library's node / block names).
    default_layers : tuple of str
        Layers read when the config names none.
    builder : Builder
    weight_files : callable
        ``weights_dir -> [WeightFile]``: the files the pretrained weights need.
    default_readout : {"flatten", "cls", "mean"}
        How ``(batch, tokens, channels)`` outputs become one vector per stimulus.
    """

    name: str
    library: str
    modality: Modality
    layers: tuple[str, ...]
    default_layers: tuple[str, ...]
    builder: Builder
    weight_files: Callable[[Path | None], list[WeightFile]]
    default_readout: Readout = "flatten"


NETWORKS: dict[str, Network] = {}
"""Registered networks by name."""


def register_network(net: Network) -> Network:
    """Add ``net`` to :data:`NETWORKS` (one entry per network)."""
    if net.name in NETWORKS and NETWORKS[net.name] is not net:
        raise ValueError(f"network {net.name!r} is already registered")
    unknown = [lay for lay in net.default_layers if lay not in net.layers]
    if unknown:
        raise ValueError(f"network {net.name!r}: default layers {unknown} are not in its layers")
    NETWORKS[net.name] = net
    return net


def get_network(name: str, source: str = "config", key: str = "network") -> Network:
    """Return the network registered as ``name`` (error lists the known ones)."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise BrainpipeInputError(
            source, key, f"unknown network {name!r}; known networks: {', '.join(sorted(NETWORKS))}"
        ) from None


def layer_variable(layer: str) -> str:
    """Store variable name of a layer (``features.5`` → ``features_5``)."""
    return "".join(c if c.isalnum() else "_" for c in layer)


def layer_views(output: Any, readout: Readout) -> tuple[Any, Any]:
    """Flat readout ``(batch, feature)`` and token view ``(batch, token, channel)``.

    Parameters
    ----------
    output : torch.Tensor
        ``(B, F)``, ``(B, C, H, W)`` or ``(B, T, C)``.
    readout : {"flatten", "cls", "mean"}
        For ``(B, T, C)``: keep the first (class) token, average the tokens, or flatten.
        Conv maps are always flattened in ``(C, H, W)`` order.

    Returns
    -------
    flat : torch.Tensor, shape (B, n_features)
    tokens : torch.Tensor or None
        ``(B, H*W, C)`` for conv maps, ``(B, T, C)`` for token sequences, else None.
    """
    if output.ndim == 2:
        return output, None
    if output.ndim == 4:
        b, c, h, w = output.shape
        return output.reshape(b, -1), output.reshape(b, c, h * w).transpose(1, 2)
    if output.ndim == 3:
        if readout == "cls":
            return output[:, 0], output
        if readout == "mean":
            return output.mean(dim=1), output
        return output.reshape(output.shape[0], -1), output
    return output.reshape(output.shape[0], -1), None


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Forbid hub downloads while a library builds a model (weights come from the cache)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- cache folders


def torch_hub_dir(weights_dir: Path | None) -> Path:
    """Torch hub folder: ``weights_dir/torch/hub`` or torch's own (``$TORCH_HOME/hub``)."""
    if weights_dir is not None:
        return Path(weights_dir) / "torch" / "hub"
    import torch.hub

    return Path(torch.hub.get_dir())


def hf_cache_dir(weights_dir: Path | None) -> Path:
    """Hugging Face hub cache: ``weights_dir/huggingface/hub`` or the hub's own."""
    if weights_dir is not None:
        return Path(weights_dir) / "huggingface" / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_repo_folder(cache: Path, repo_id: str) -> Path:
    """Folder of a model repo in the hub cache (``models--org--name``)."""
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def hf_cached_file(cache: Path, repo_id: str, filename: str, revision: str = "main") -> Path:
    """Where the hub cache keeps ``filename`` of ``repo_id`` at ``revision``.

    Follows ``refs/<revision>`` to the snapshot as huggingface_hub does; if the ref is
    not there yet, the path under ``snapshots/<revision>`` (what a fetch will create for
    a pinned commit).
    """
    repo = hf_repo_folder(cache, repo_id)
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    return repo / "snapshots" / commit / filename


# --------------------------------------------------------------------------- torchvision


def _torchvision_weights(enum_path: str) -> Any:
    import torchvision.models as tvm

    cls_name, member = enum_path.split(".")
    return getattr(getattr(tvm, cls_name), member)


def torchvision_weight_files(enum_path: str) -> Callable[[Path | None], list[WeightFile]]:
    """Weight files of a torchvision weights enum (``"ResNet50_Weights.IMAGENET1K_V2"``).

    torchvision loads them with ``torch.hub.load_state_dict_from_url`` from
    ``<hub dir>/checkpoints/<file name of the url>``; the file name carries the first
    digits of the file's SHA-256 (torch hub's ``check_hash`` convention).
    """

    def files(weights_dir: Path | None) -> list[WeightFile]:
        import re

        url = _torchvision_weights(enum_path).url
        name = url.rsplit("/", 1)[-1]
        match = re.search(r"-([a-f0-9]*)\.", name)
        checksum = f"sha256-prefix:{match.group(1)}" if match else ""
        return [WeightFile(torch_hub_dir(weights_dir) / "checkpoints" / name, url, checksum)]

    return files


def _image_collate(items: list[Any]) -> Any:
    import torch

    return torch.stack(items)


def torchvision_builder(arch: str, enum_path: str) -> Builder:
    """Build ``torchvision.models.<arch>``; layers via ``create_feature_extractor``."""

    def build(pretrained: bool, weights_dir: Path | None, seed: int) -> Loaded:
        import torch
        import torchvision.models as tvm
        from torchvision.models.feature_extraction import create_feature_extractor

        weights = _torchvision_weights(enum_path)
        if pretrained:
            hub_before = torch.hub.get_dir()
            torch.hub.set_dir(str(torch_hub_dir(weights_dir)))
            try:
                model = getattr(tvm, arch)(weights=weights)
            finally:
                torch.hub.set_dir(hub_before)
        else:
            torch.manual_seed(seed)
            model = getattr(tvm, arch)(weights=None)
        model.eval()
        extractors: dict[tuple[str, ...], Any] = {}

        def forward(batch: Any, layers: Sequence[str], device: Any) -> dict[str, Any]:
            key = tuple(layers)
            if key not in extractors:
                extractors[key] = create_feature_extractor(model, {lay: lay for lay in key})
            return extractors[key](batch.to(device, non_blocking=True))

        return Loaded(model, weights.transforms(), _image_collate, forward)

    return build


# --------------------------------------------------------------------------- open_clip

CLIP_HF_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
CLIP_FILE = "open_clip_model.safetensors"
#: open_clip ViT-L/14 with OpenAI's weights: the image encoder Stable Diffusion image
#: variations and Versatile Diffusion condition on (open_clip's ``openai`` tag, served
#: from the hub repo below).
CLIP_L14_HF_REPO = "timm/vit_large_patch14_clip_224.openai"


def _open_clip_weight_files(repo: str) -> Callable[[Path | None], list[WeightFile]]:
    def files(weights_dir: Path | None) -> list[WeightFile]:
        cache = hf_cache_dir(weights_dir)
        return [
            WeightFile(
                hf_cached_file(cache, repo, CLIP_FILE),
                f"https://huggingface.co/{repo}/resolve/main/{CLIP_FILE}",
                "hf-etag",
            )
        ]

    return files


_clip_weight_files = _open_clip_weight_files(CLIP_HF_REPO)


def _clip_model(
    pretrained: bool,
    weights_dir: Path | None,
    seed: int,
    arch: str = "ViT-B-32",
    tag: str = "laion2b_s34b_b79k",
) -> tuple[Any, Any]:
    import open_clip
    import torch

    if pretrained:
        with hub_offline():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=tag, cache_dir=str(hf_cache_dir(weights_dir))
            )
    else:
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return model.eval(), preprocess


def _block_hooks(blocks: Any, layers: Sequence[str], prefix: str) -> tuple[dict, list]:
    outs: dict[str, Any] = {}
    handles = []
    for lay in layers:
        if lay.startswith(prefix):
            i = int(lay[len(prefix) :])

            def hook(_m: Any, _i: Any, o: Any, name: str = lay) -> None:
                outs[name] = o

            handles.append(blocks[i].register_forward_hook(hook))
    return outs, handles


def _clip_image_builder(
    pretrained: bool,
    weights_dir: Path | None,
    seed: int,
    arch: str = "ViT-B-32",
    tag: str = "laion2b_s34b_b79k",
) -> Loaded:
    model, preprocess = _clip_model(pretrained, weights_dir, seed, arch, tag)

    def forward(batch: Any, layers: Sequence[str], device: Any) -> dict[str, Any]:
        outs, handles = _block_hooks(model.visual.transformer.resblocks, layers, "block")
        try:
            emb = model.encode_image(batch.to(device, non_blocking=True))
        finally:
            for h in handles:
                h.remove()
        outs["embedding"] = emb
        return {lay: outs[lay] for lay in layers}

    return Loaded(model, preprocess, _image_collate, forward, {"block": "cls"})


def _clip_text_builder(pretrained: bool, weights_dir: Path | None, seed: int) -> Loaded:
    import open_clip

    model, _ = _clip_model(pretrained, weights_dir, seed)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    def preprocess(text: str) -> Any:
        return tokenizer([str(text)])[0]

    def forward(batch: Any, layers: Sequence[str], device: Any) -> dict[str, Any]:
        outs, handles = _block_hooks(model.transformer.resblocks, layers, "block")
        try:
            emb = model.encode_text(batch.to(device))
        finally:
            for h in handles:
                h.remove()
        outs["embedding"] = emb
        return {lay: outs[lay] for lay in layers}

    return Loaded(model, preprocess, _image_collate, forward)


# --------------------------------------------------------------------------- transformers


def hf_weight_files(repo_id: str, filenames: Sequence[str]) -> Callable[..., list[WeightFile]]:
    """Files of a hub repo in the hub cache layout (loaded by ``from_pretrained``)."""

    def files(weights_dir: Path | None) -> list[WeightFile]:
        cache = hf_cache_dir(weights_dir)
        return [
            WeightFile(
                hf_cached_file(cache, repo_id, f),
                f"https://huggingface.co/{repo_id}/resolve/main/{f}",
                "hf-etag",
            )
            for f in filenames
        ]

    return files


def _hidden_states_forward(model: Any) -> Callable[..., dict[str, Any]]:
    def forward(batch: Any, layers: Sequence[str], device: Any) -> dict[str, Any]:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch, output_hidden_states=True)
        hidden = out.hidden_states
        res = {}
        for lay in layers:
            h = hidden[int(lay.removeprefix("hidden"))]
            if "attention_mask" in batch:  # mean over real tokens only, pads set to zero
                mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                h = h * mask * (mask.shape[1] / mask.sum(dim=1, keepdim=True))
            res[lay] = h
        return res

    return forward


def _transformers_model(
    repo_id: str, model_class: str, config_class: str, cache: str, pretrained: bool, seed: int
) -> Any:
    """The model with its cached weights, or its architecture seeded at random (eval mode).

    Call inside :func:`hub_offline`: both paths read only the local cache.
    """
    import torch
    import transformers

    if pretrained:
        model = getattr(transformers, model_class).from_pretrained(
            repo_id, cache_dir=cache, local_files_only=True
        )
    else:
        torch.manual_seed(seed)
        config = getattr(transformers, config_class).from_pretrained(
            repo_id, cache_dir=cache, local_files_only=True
        )
        model = getattr(transformers, model_class)(config)
    return model.eval()


def transformers_image_builder(repo_id: str, model_class: str, config_class: str) -> Builder:
    """A transformers vision model with ``AutoImageProcessor`` preprocessing."""

    def build(pretrained: bool, weights_dir: Path | None, seed: int) -> Loaded:
        import torch
        import transformers

        cache = str(hf_cache_dir(weights_dir))
        with hub_offline():
            processor = transformers.AutoImageProcessor.from_pretrained(
                repo_id, cache_dir=cache, local_files_only=True
            )
            model = _transformers_model(repo_id, model_class, config_class, cache, pretrained, seed)

        def preprocess(image: Any) -> Any:
            return processor(images=image, return_tensors="pt")["pixel_values"][0]

        def collate(items: list[Any]) -> Any:
            return {"pixel_values": torch.stack(items)}

        return Loaded(model, preprocess, collate, _hidden_states_forward(model), {"hidden": "cls"})

    return build


def transformers_text_builder(repo_id: str, model_class: str, config_class: str) -> Builder:
    """A transformers text model with its own tokenizer; hidden states per layer."""

    def build(pretrained: bool, weights_dir: Path | None, seed: int) -> Loaded:
        import transformers

        cache = str(hf_cache_dir(weights_dir))
        with hub_offline():
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                repo_id, cache_dir=cache, local_files_only=True
            )
            model = _transformers_model(repo_id, model_class, config_class, cache, pretrained, seed)
        if tokenizer.pad_token is None:  # GPT-2 has none: pad with its end-of-text token
            tokenizer.pad_token = tokenizer.eos_token

        def collate(items: list[str]) -> Any:
            return dict(
                tokenizer(
                    [str(t) for t in items],
                    padding="max_length",
                    truncation=True,
                    max_length=64,
                    return_tensors="pt",
                )
            )

        return Loaded(model, str, collate, _hidden_states_forward(model), {"hidden": "mean"})

    return build


# --------------------------------------------------------------------------- pymoten


def _moten_builder(pretrained: bool, weights_dir: Path | None, seed: int) -> Loaded:
    """pymoten's default motion-energy pyramid; no weights (the filters are analytic)."""
    import torch

    from brainpipe.features.stimuli import read_video_luminance

    pyramids: dict[tuple[int, int], Any] = {}

    def preprocess(path: Any) -> Any:
        lum, fps = read_video_luminance(path, size=(96, 96))
        return torch.from_numpy(np.ascontiguousarray(lum, dtype=np.float32)), fps

    def collate(items: list[Any]) -> Any:
        return items

    def forward(batch: Any, layers: Sequence[str], device: Any) -> dict[str, Any]:
        import moten

        rows = []
        for lum, fps in batch:
            key = (lum.shape[1], lum.shape[2], round(float(fps)))
            if key not in pyramids:
                pyramids[key] = moten.get_default_pyramid(vhsize=key[:2], fps=key[2])
            energy = pyramids[key].project_stimulus(lum.numpy())  # (frames, filters)
            rows.append(torch.from_numpy(np.asarray(energy, dtype=np.float32)).mean(dim=0))
        return {"energy": torch.stack(rows)}

    return Loaded(None, preprocess, collate, forward)


# --------------------------------------------------------------------------- the registry

register_network(
    Network(
        name="alexnet",
        library="torchvision",
        modality="image",
        layers=tuple(f"features.{i}" for i in range(13))
        + tuple(f"classifier.{i}" for i in range(7))
        + ("avgpool",),
        default_layers=("features.2", "features.5", "features.12", "classifier.5"),
        builder=torchvision_builder("alexnet", "AlexNet_Weights.IMAGENET1K_V1"),
        weight_files=torchvision_weight_files("AlexNet_Weights.IMAGENET1K_V1"),
    )
)
register_network(
    Network(
        name="resnet50",
        library="torchvision",
        modality="image",
        layers=("maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"),
        default_layers=("layer2", "layer3", "layer4", "avgpool"),
        builder=torchvision_builder("resnet50", "ResNet50_Weights.IMAGENET1K_V2"),
        weight_files=torchvision_weight_files("ResNet50_Weights.IMAGENET1K_V2"),
    )
)
register_network(
    Network(
        name="vitb16",
        library="torchvision",
        modality="image",
        layers=tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12))
        + ("encoder.ln", "heads.head"),
        default_layers=(
            "encoder.layers.encoder_layer_3",
            "encoder.layers.encoder_layer_7",
            "encoder.ln",
        ),
        builder=torchvision_builder("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1"),
        weight_files=torchvision_weight_files("ViT_B_16_Weights.IMAGENET1K_V1"),
        default_readout="cls",
    )
)
register_network(
    Network(
        name="clipvitb32",
        library="open_clip",
        modality="image",
        layers=tuple(f"block{i}" for i in range(12)) + ("embedding",),
        default_layers=("block5", "block11", "embedding"),
        builder=_clip_image_builder,
        weight_files=_clip_weight_files,
        default_readout="cls",
    )
)
register_network(
    Network(
        name="clipvitb32text",
        library="open_clip",
        modality="text",
        layers=tuple(f"block{i}" for i in range(12)) + ("embedding",),
        default_layers=("embedding",),
        builder=_clip_text_builder,
        weight_files=_clip_weight_files,
        default_readout="mean",
    )
)
register_network(
    Network(
        name="bert",
        library="transformers",
        modality="text",
        layers=tuple(f"hidden{i}" for i in range(13)),
        default_layers=("hidden4", "hidden8", "hidden12"),
        builder=transformers_text_builder(
            "google-bert/bert-base-uncased", "BertModel", "BertConfig"
        ),
        weight_files=hf_weight_files(
            "google-bert/bert-base-uncased",
            ("config.json", "tokenizer_config.json", "vocab.txt", "model.safetensors"),
        ),
        default_readout="mean",
    )
)
register_network(
    Network(
        name="gpt2",
        library="transformers",
        modality="text",
        layers=tuple(f"hidden{i}" for i in range(13)),
        default_layers=("hidden6", "hidden12"),
        builder=transformers_text_builder("openai-community/gpt2", "GPT2Model", "GPT2Config"),
        # also the language model of the caption decoder (brainpipe.generate.captioner)
        weight_files=hf_weight_files(
            "openai-community/gpt2",
            (
                "config.json",
                "generation_config.json",
                "tokenizer_config.json",
                "vocab.json",
                "merges.txt",
                "tokenizer.json",
                "model.safetensors",
            ),
        ),
        default_readout="mean",
    )
)
register_network(
    Network(
        name="dinov2",
        library="transformers",
        modality="image",
        layers=tuple(f"hidden{i}" for i in range(13)),
        default_layers=("hidden4", "hidden8", "hidden12"),
        builder=transformers_image_builder("facebook/dinov2-base", "Dinov2Model", "Dinov2Config"),
        weight_files=hf_weight_files(
            "facebook/dinov2-base", ("config.json", "preprocessor_config.json", "model.safetensors")
        ),
        default_readout="cls",
    )
)
register_network(
    Network(
        name="motionenergy",
        library="pymoten",
        modality="video",
        layers=("energy",),
        default_layers=("energy",),
        builder=_moten_builder,
        weight_files=lambda weights_dir: [],
    )
)
register_network(
    Network(
        name="clipvitl14",
        library="open_clip",
        modality="image",
        layers=tuple(f"block{i}" for i in range(24)) + ("embedding",),
        default_layers=("block11", "block23", "embedding"),
        builder=lambda pretrained, weights_dir, seed: _clip_image_builder(
            pretrained, weights_dir, seed, "ViT-L-14", "openai"
        ),
        weight_files=_open_clip_weight_files(CLIP_L14_HF_REPO),
        default_readout="cls",
    )
)
register_network(
    Network(
        name="inceptionv3",
        library="torchvision",
        modality="image",
        layers=("Mixed_5d", "Mixed_6e", "Mixed_7c", "avgpool", "fc"),
        default_layers=("avgpool",),
        builder=torchvision_builder("inception_v3", "Inception_V3_Weights.IMAGENET1K_V1"),
        weight_files=torchvision_weight_files("Inception_V3_Weights.IMAGENET1K_V1"),
    )
)
