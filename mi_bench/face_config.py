"""Options of the face datasets (``dataset.face.*``), kept apart so ``mi_bench.data`` stays small.

They apply to ``lfw``, ``att_faces``, ``celeba`` and ``folder`` (``mi_bench.faces``); the other
datasets ignore them. Sizes are in pixels of the source image (after ``pre_resize``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mi_bench.params import param

PUBLIC_SETS = ("", "ffhq", "facescrub", "folder")


@dataclass
class FaceConfig:
    min_images: int = param(
        20, ge=1,
        help="identities with at least this many images are private candidates (lfw, folder: "
        "the first dataset.private_classes of them, or all when it is 0; celeba: 30)",
    )
    max_per_identity: int = param(
        0, ge=0, help="cap on the images used per identity, a random subset by split_seed (0 = all)"
    )
    crop: int = param(
        0, ge=0, help="side of the centred square crop in source pixels (0 = the largest centred square)"
    )
    pre_resize: int = param(
        0, ge=0, help="resize the source to this square side before cropping (0 = no; FaceScrub: 64)"
    )
    channels: int = param(3, choices=(1, 3), help="3 = colour (RGB), 1 = grey")
    align: str = param(
        "center", choices=("center", "detect"), neutral_default=True,
        help="center = the centred crop (face.crop); detect = a square around the largest face "
        "OpenCV's bundled Haar cascade finds (unaligned photos; pip install 'mi-bench[faces]')",
    )
    align_margin: float = param(
        0.05, ge=0.0, le=2.0, neutral_default=True,
        help="align=detect: fraction of the face box added on each side of the crop (0.05 frames "
        "an LFW photo like lfw.yaml's 120-pixel crop)",
    )
    no_face: str = param(
        "drop", choices=("drop", "center"), neutral_default=True,
        help="align=detect, an image without a detected face: drop it, or keep its centred crop",
    )
    path: str = param(
        "", help="folder of the images (folder dataset: one sub-folder per identity); "
        "'' = the dataset's default place under data_root; relative paths are under data_root"
    )
    public: str = param(
        "", choices=PUBLIC_SETS,
        help="the attacker's public set: '' = the dataset's own non-private identities; ffhq, "
        "facescrub or folder = images of another collection (identity overlap then unchecked)",
    )
    public_path: str = param("", help="folder of the public set ('' = ffhq/, facescrub/ under data_root)")
    public_crop: int = param(
        -1, ge=-1, help="centre crop of the public set (-1 = that set's published crop: ffhq 88, "
        "facescrub 54 after pre_resize 64; own identities: face.crop)",
    )
    public_size: int = param(0, ge=0, help="random subset of the public images, by split_seed (0 = all)")
    train_list: str = param(
        "", help="celeba: a file of '<image> <label>' lines for the private training set (the "
        "official trainset.txt); '' = derive the split from identity_CelebA.txt",
    )
    test_list: str = param("", help="celeba: '<image> <label>' lines of the private test set")
    public_list: str = param("", help="celeba: '<image>' lines of the public set (official ganset.txt)")
