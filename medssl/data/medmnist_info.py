"""Official facts about every MedMNIST v2 dataset, including the MedMNIST+ larger sizes.

MedMNIST v2: J. Yang, R. Shi, D. Wei, Z. Liu, L. Zhao, B. Ke, H. Pfister, B. Ni,
"MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10:41 (2023). https://github.com/MedMNIST/MedMNIST

The values (class names, tasks, channel counts, split sizes, licenses, download URLs and
MD5 checksums) are copied from ``medmnist/info.py`` of the official MedMNIST package,
version 3.0.2 (Zenodo record 10519652, which also holds the MedMNIST+ 64/128/224 files).
Descriptions are shortened to one line. ``spatial_dims`` is added here (2 or 3).

Note that MedMNIST 3.x re-released a few 28-size files (organamnist, organcmnist,
organsmnist, organmnist3d, vesselmnist3d) with new MD5s and slightly different sample
counts compared with the 2.x files on Zenodo record 6496656; the 3.x values are used here.
"""

from __future__ import annotations

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"
HOMEPAGE = "https://github.com/MedMNIST/MedMNIST/"

_ORGAN_LABELS = {
    "0": "bladder",
    "1": "femur-left",
    "2": "femur-right",
    "3": "heart",
    "4": "kidney-left",
    "5": "kidney-right",
    "6": "liver",
    "7": "lung-left",
    "8": "lung-right",
    "9": "pancreas",
    "10": "spleen",
}


def _files(flag: str, md5: dict[int, str]) -> dict[str, str]:
    """Build the url/MD5 keys (``url``, ``MD5``, ``url_64``, ``MD5_64``, ...) for one flag."""
    out: dict[str, str] = {}
    for size, checksum in md5.items():
        suffix = "" if size == 28 else f"_{size}"
        out[f"url{suffix}"] = f"{ZENODO_RECORD}/{flag}{suffix}.npz?download=1"
        out[f"MD5{suffix}"] = checksum
    return out


INFO: dict[str, dict] = {
    # ------------------------------------------------------------------ 2D
    "pathmnist": {
        "python_class": "PathMNIST",
        "description": "Colorectal cancer histology patches (NCT-CRC-HE-100K / CRC-VAL-HE-7K), "
        "9 tissue types, RGB.",
        **_files(
            "pathmnist",
            {
                28: "a8b06965200029087d5bd730944a56c1",
                64: "55aa9c1e0525abe5a6b9d8343a507616",
                128: "ac42d08fb904d92c244187169d1fd1d9",
                224: "2c51a510bcdc9cf8ddb2af93af1eadec",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "adipose",
            "1": "background",
            "2": "debris",
            "3": "lymphocytes",
            "4": "mucus",
            "5": "smooth muscle",
            "6": "normal colon mucosa",
            "7": "cancer-associated stroma",
            "8": "colorectal adenocarcinoma epithelium",
        },
        "n_channels": 3,
        "n_samples": {"train": 89996, "val": 10004, "test": 7180},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "chestmnist": {
        "python_class": "ChestMNIST",
        "description": "NIH ChestX-ray14 frontal chest X-rays, 14 disease labels (multi-label).",
        **_files(
            "chestmnist",
            {
                28: "02c8a6516a18b556561a56cbdd36c4a8",
                64: "9de6cd0b934ebb5b7426cfba5efbae16",
                128: "db107e5590b27930b62dbaf558aebee3",
                224: "45bd33e6f06c3e8cdb481c74a89152aa",
            },
        ),
        "task": "multi-label, binary-class",
        "label": {
            "0": "atelectasis",
            "1": "cardiomegaly",
            "2": "effusion",
            "3": "infiltration",
            "4": "mass",
            "5": "nodule",
            "6": "pneumonia",
            "7": "pneumothorax",
            "8": "consolidation",
            "9": "edema",
            "10": "emphysema",
            "11": "fibrosis",
            "12": "pleural",
            "13": "hernia",
        },
        "n_channels": 1,
        "n_samples": {"train": 78468, "val": 11219, "test": 22433},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "dermamnist": {
        "python_class": "DermaMNIST",
        "description": "HAM10000 dermatoscopic images of pigmented skin lesions, 7 diseases, RGB.",
        **_files(
            "dermamnist",
            {
                28: "0744692d530f8e62ec473284d019b0c7",
                64: "b70a2f5635c6199aeaa28c31d7202e1f",
                128: "2defd784463fa5243564e855ed717de1",
                224: "8974907d8e169bef5f5b96bc506ae45d",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "actinic keratoses and intraepithelial carcinoma",
            "1": "basal cell carcinoma",
            "2": "benign keratosis-like lesions",
            "3": "dermatofibroma",
            "4": "melanoma",
            "5": "melanocytic nevi",
            "6": "vascular lesions",
        },
        "n_channels": 3,
        "n_samples": {"train": 7007, "val": 1003, "test": 2005},
        "license": "CC BY-NC 4.0",
        "spatial_dims": 2,
    },
    "octmnist": {
        "python_class": "OCTMNIST",
        "description": "Retinal optical coherence tomography (OCT) images, 4 diagnosis categories.",
        **_files(
            "octmnist",
            {
                28: "c68d92d5b585d8d81f7112f81e2d0842",
                64: "e229e9440236b774d9f0dfef9d07bdaf",
                128: "0a97e76651ace45c5d943ee3f65b63ae",
                224: "abc493b6d529d5de7569faaef2773ba3",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "choroidal neovascularization",
            "1": "diabetic macular edema",
            "2": "drusen",
            "3": "normal",
        },
        "n_channels": 1,
        "n_samples": {"train": 97477, "val": 10832, "test": 1000},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "pneumoniamnist": {
        "python_class": "PneumoniaMNIST",
        "description": "Pediatric chest X-rays, pneumonia vs normal.",
        **_files(
            "pneumoniamnist",
            {
                28: "28209eda62fecd6e6a2d98b1501bb15f",
                64: "8f4eceb4ccffa70c672198ea285246c6",
                128: "05b46931834c231683c68f40c47b2971",
                224: "d6a3c71de1b945ea11211b03746c1fe1",
            },
        ),
        "task": "binary-class",
        "label": {"0": "normal", "1": "pneumonia"},
        "n_channels": 1,
        "n_samples": {"train": 4708, "val": 524, "test": 624},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "retinamnist": {
        "python_class": "RetinaMNIST",
        "description": "DeepDRiD retina fundus images, 5-level diabetic retinopathy grading, RGB.",
        **_files(
            "retinamnist",
            {
                28: "bd4c0672f1bba3e3a89f0e4e876791e4",
                64: "afda852cc34dcda56f86ad2b2457dbcc",
                128: "e48e916a24454daf90583d4e6efb1a18",
                224: "eae7e3b6f3fcbda4ae613ebdcbe35348",
            },
        ),
        "task": "ordinal-regression",
        "label": {"0": "0", "1": "1", "2": "2", "3": "3", "4": "4"},
        "n_channels": 3,
        "n_samples": {"train": 1080, "val": 120, "test": 400},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "breastmnist": {
        "python_class": "BreastMNIST",
        "description": "Breast ultrasound images, malignant vs normal+benign.",
        **_files(
            "breastmnist",
            {
                28: "750601b1f35ba3300ea97c75c52ff8f6",
                64: "742edef2a1fd1524b2efff4bd7ba9364",
                128: "363e4b3f8d712e9b5de15470a2aaadf1",
                224: "b56378a6eefa9fed602bb16d192d4c8b",
            },
        ),
        "task": "binary-class",
        "label": {"0": "malignant", "1": "normal, benign"},
        "n_channels": 1,
        "n_samples": {"train": 546, "val": 78, "test": 156},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "bloodmnist": {
        "python_class": "BloodMNIST",
        "description": "Microscopy images of individual normal blood cells, 8 cell types, RGB.",
        **_files(
            "bloodmnist",
            {
                28: "7053d0359d879ad8a5505303e11de1dc",
                64: "2b94928a2ae4916078ca51e05b6b800b",
                128: "adace1e0ed228fccda1f39692059dd4c",
                224: "b718ff6835fcbdb22ba9eacccd7b2601",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "basophil",
            "1": "eosinophil",
            "2": "erythroblast",
            "3": "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
            "4": "lymphocyte",
            "5": "monocyte",
            "6": "neutrophil",
            "7": "platelet",
        },
        "n_channels": 3,
        "n_samples": {"train": 11959, "val": 1712, "test": 3421},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "tissuemnist": {
        "python_class": "TissueMNIST",
        "description": "BBBC051 human kidney cortex cells (max projection of 7 slices), 8 types.",
        **_files(
            "tissuemnist",
            {
                28: "ebe78ee8b05294063de985d821c1c34b",
                64: "123ece2eba09d0aa5d698fda57103344",
                128: "61b955355d7425a89687b06cca3ce0c2",
                224: "b077128c4a949f0a4eb01517f9037b9c",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "Collecting Duct, Connecting Tubule",
            "1": "Distal Convoluted Tubule",
            "2": "Glomerular endothelial cells",
            "3": "Interstitial endothelial cells",
            "4": "Leukocytes",
            "5": "Podocytes",
            "6": "Proximal Tubule Segments",
            "7": "Thick Ascending Limb",
        },
        "n_channels": 1,
        "n_samples": {"train": 165466, "val": 23640, "test": 47280},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "organamnist": {
        "python_class": "OrganAMNIST",
        "description": "LiTS abdominal CT, axial center slices of 11 organ bounding boxes.",
        **_files(
            "organamnist",
            {
                28: "68e3f8846a6bd62f0c9bf841c0d9eacc",
                64: "2dcccc29b88e6da5a01161ef20cda288",
                128: "eeae80d0a227a8d099027e1b3cfd3b60",
                224: "50747347e05c87dd3aaf92c49f9f3170",
            },
        ),
        "task": "multi-class",
        "label": dict(_ORGAN_LABELS),
        "n_channels": 1,
        "n_samples": {"train": 34561, "val": 6491, "test": 17778},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "organcmnist": {
        "python_class": "OrganCMNIST",
        "description": "LiTS abdominal CT, coronal center slices of 11 organ bounding boxes.",
        **_files(
            "organcmnist",
            {
                28: "b9ceb9546e10131b32923c5bbeaea2b1",
                64: "3ce34a8724ea6f548e6db4744d03b6a9",
                128: "773c1f009daa3fe5d9a2a201b2a7ed94",
                224: "050f5e875dc056f6768abf94ec9995d1",
            },
        ),
        "task": "multi-class",
        "label": dict(_ORGAN_LABELS),
        "n_channels": 1,
        "n_samples": {"train": 12975, "val": 2392, "test": 8216},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    "organsmnist": {
        "python_class": "OrganSMNIST",
        "description": "LiTS abdominal CT, sagittal center slices of 11 organ bounding boxes.",
        **_files(
            "organsmnist",
            {
                28: "9ab87b696fb54e2a387ebe992d6ed5f1",
                64: "53a6d115339d874c25e309a994ff46d3",
                128: "ded0c5fa01a95dc4978b956f613e9b8e",
                224: "b354719e553fbbb2513d5533f52a4cb1",
            },
        ),
        "task": "multi-class",
        "label": dict(_ORGAN_LABELS),
        "n_channels": 1,
        "n_samples": {"train": 13932, "val": 2452, "test": 8827},
        "license": "CC BY 4.0",
        "spatial_dims": 2,
    },
    # ------------------------------------------------------------------ 3D
    "organmnist3d": {
        "python_class": "OrganMNIST3D",
        "description": "LiTS abdominal CT, 3D organ bounding boxes of 11 organs.",
        **_files(
            "organmnist3d",
            {
                28: "a0c5a1ff56af4f155c46d46fbb45a2fe",
                64: "58a2205adf14a9d0a189cb06dc78bf10",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "liver",
            "1": "kidney-right",
            "2": "kidney-left",
            "3": "femur-right",
            "4": "femur-left",
            "5": "bladder",
            "6": "heart",
            "7": "lung-right",
            "8": "lung-left",
            "9": "spleen",
            "10": "pancreas",
        },
        "n_channels": 1,
        "n_samples": {"train": 971, "val": 161, "test": 610},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
    "nodulemnist3d": {
        "python_class": "NoduleMNIST3D",
        "description": "LIDC-IDRI thoracic CT lung nodules, benign vs malignant.",
        **_files(
            "nodulemnist3d",
            {
                28: "8755a7e9e05a4d9ce80a24c3e7a256f3",
                64: "c47c5b7d457bf6332200d2ea6d64ecd8",
            },
        ),
        "task": "binary-class",
        "label": {"0": "benign", "1": "malignant"},
        "n_channels": 1,
        "n_samples": {"train": 1158, "val": 165, "test": 310},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
    "adrenalmnist3d": {
        "python_class": "AdrenalMNIST3D",
        "description": "3D shape masks of adrenal glands from abdominal CT, normal vs mass.",
        **_files(
            "adrenalmnist3d",
            {
                28: "bbd3c5a5576322bc4cdfea780653b1ce",
                64: "17721accfe9fb005146a47d33bc54b2f",
            },
        ),
        "task": "binary-class",
        "label": {"0": "normal", "1": "hyperplasia"},
        "n_channels": 1,
        "n_samples": {"train": 1188, "val": 98, "test": 298},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
    "fracturemnist3d": {
        "python_class": "FractureMNIST3D",
        "description": "RibFrac chest CT rib fractures: buckle, nondisplaced, displaced.",
        **_files(
            "fracturemnist3d",
            {
                28: "6aa7b0143a6b42da40027a9dda61302f",
                64: "f01d7e6316aedf4210da0da5b7437b42",
            },
        ),
        "task": "multi-class",
        "label": {
            "0": "buckle rib fracture",
            "1": "nondisplaced rib fracture",
            "2": "displaced rib fracture",
        },
        "n_channels": 1,
        "n_samples": {"train": 1027, "val": 103, "test": 240},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
    "vesselmnist3d": {
        "python_class": "VesselMNIST3D",
        "description": "IntrA voxelized brain vessel segments from MRA, vessel vs aneurysm.",
        **_files(
            "vesselmnist3d",
            {
                28: "b41fd4f7e7e2feedddb201585ecafa1b",
                64: "6bb274a8846e1097066dcd64e2c4520f",
            },
        ),
        "task": "binary-class",
        "label": {"0": "vessel", "1": "aneurysm"},
        "n_channels": 1,
        "n_samples": {"train": 1335, "val": 191, "test": 382},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
    "synapsemnist3d": {
        "python_class": "SynapseMNIST3D",
        "description": "Electron microscopy volumes of rat synapses, excitatory vs inhibitory.",
        **_files(
            "synapsemnist3d",
            {
                28: "1235b78a3cd6280881dd7850a78eadb6",
                64: "43bd14ebf3af9d3dd072446fedc14d5e",
            },
        ),
        "task": "binary-class",
        "label": {"0": "inhibitory synapse", "1": "excitatory synapse"},
        "n_channels": 1,
        "n_samples": {"train": 1230, "val": 177, "test": 352},
        "license": "CC BY 4.0",
        "spatial_dims": 3,
    },
}
