"""Where to get each dataset and how its folder must look (shown in every missing-file error,
and used as the TFDS builders' ``MANUAL_DOWNLOAD_INSTRUCTIONS``)."""

from __future__ import annotations

INSTRUCTIONS = {
    "flickr8k": """\
Flickr8K: request the files from the University of Illinois form
(https://forms.illinois.edu/sec/1713398) or use the copies in Karpathy's neuraltalk release.
Put them in DATA_DIR like this (the text files may also sit in DATA_DIR/Flickr8k_text/):
  DATA_DIR/Flickr8k.token.txt             <name>.jpg#0..#4 <TAB> caption
  DATA_DIR/Flickr_8k.trainImages.txt      6,000 file names, one per line
  DATA_DIR/Flickr_8k.devImages.txt        1,000 file names
  DATA_DIR/Flickr_8k.testImages.txt       1,000 file names
  DATA_DIR/Flicker8k_Dataset/<name>.jpg   the images (not needed with FEATURES)
or instead of the three lists and the token file: DATA_DIR/dataset_flickr8k.json (Karpathy's
split, https://cs.stanford.edu/people/karpathy/deepimagesent/).""",
    "flickr30k": """\
Flickr30K: request it at https://shannon.cs.illinois.edu/DenotationGraph/ (the
flickr30k.tar.gz captions and flickr30k-images.tar.gz images). Put in DATA_DIR:
  DATA_DIR/results_20130124.token         <name>.jpg#0..#4 <TAB> caption (or DATA_DIR/flickr30k/)
  DATA_DIR/flickr30k-images/<name>.jpg     the images (not needed with FEATURES)
  DATA_DIR/dataset_flickr30k.json          Karpathy's split (29,000 / 1,014 / 1,000), from
                                           https://cs.stanford.edu/people/karpathy/deepimagesent/
The JSON alone is enough (it holds the captions). Without it, split lists (dataset.train_list,
dataset.val_list, dataset.test_list: one file name per line) or, failing both, a deterministic
split of the same sizes (with a warning).""",
    "coco": """\
MS COCO 2014: from https://cocodataset.org/#download get train2014.zip, val2014.zip and
annotations_trainval2014.zip. Put in DATA_DIR:
  DATA_DIR/dataset_coco.json               Karpathy's split (113,287 train with restval,
                                           5,000 val, 5,000 test), from
                                           https://cs.stanford.edu/people/karpathy/deepimagesent/
  DATA_DIR/annotations/captions_train2014.json, captions_val2014.json   (used without the JSON:
                                           val2014 is then split deterministically, with a warning)
  DATA_DIR/train2014/, DATA_DIR/val2014/   the images (not needed with FEATURES)""",
    "iapr": """\
IAPR TC-12: download iaprtc12.tgz from https://www.imageclef.org/photodata and unpack it, so that
  DATA_DIR/annotations_complete_eng/NN/NNNN.eng   one SGML-like record per image
  DATA_DIR/images/NN/NNNN.jpg                     the images (not needed with FEATURES)
The m-RNN papers use 17,665 training and 1,962 test images: give that split as list files
(dataset.train_list, dataset.test_list, optional dataset.val_list; one image path per line, as
in <IMAGE>, e.g. images/01/1000.jpg), or get a deterministic split of those sizes (warned).
The TFDS builder (data_prep/tfds) reads the lists as DATA_DIR/train.txt, test.txt, val.txt.""",
    "folder": """\
Your own data: a folder with the images and a captions file, either
  DATA_DIR/captions.jsonl   one {"image": "path/in/DATA_DIR.jpg", "caption": "...",
                            "split": "train"} per line ("split" optional)
  DATA_DIR/captions.csv     a header line image,caption[,split] then one caption per row
or any path given as dataset.captions_file. Images without a split are split deterministically
(90% train, 5% val, 5% test).""",
    "shapes": "shapes is built in and needs no files.",
}

FEATURES = """\
Precomputed features: an .npz with arrays 'features' [N, D] and 'filenames' [N], or an .npy
matrix [N, D] with a names file (one file name per line; default: the same path with .txt).
Names are matched to the dataset's images by file name (or path)."""


def instructions(dataset: str) -> str:
    """Where to get ``dataset`` and the folder layout its reader expects."""
    return INSTRUCTIONS.get(dataset, f"(no download instructions for {dataset!r})")
