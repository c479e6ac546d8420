"""The paper's m-RNN (Mao et al. 2014 / ICLR 2015) on precomputed CNN features.

Run: mrnn train --config default --workdir runs/x dataset.name=flickr30k \
         --data-dir DATA --features fc7.npz
(the per-dataset configs flickr8k, flickr30k, coco, iapr and folder start from this one).

Values marked "paper" are from the m-RNN papers; every other value is our choice, with the
reason next to it, because the papers do not give it.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    """The default configuration: paper-sized layers, features from a pretrained CNN."""
    c = ConfigDict()

    c.dataset = ConfigDict()
    # shapes (built in), flickr8k, flickr30k, coco, iapr or folder (your own captions file).
    c.dataset.name = "shapes"
    # The dataset's folder, in its published layout (data_prep/README.md; a missing file's
    # error says where to get it). Paths may move between runs: resuming allows it.
    c.dataset.data_dir = ""
    # Precomputed image features: .npz with 'features' [N, D] and 'filenames' [N], or an
    # .npy matrix (memory-mapped) with the names in a .txt beside it (or features_names).
    c.dataset.features = ""
    c.dataset.features_names = ""
    # Karpathy's dataset_<name>.json (flickr8k, flickr30k, coco); "" = DATA_DIR's, if any.
    c.dataset.karpathy_json = ""
    # Split lists, one image per line (Flickr30K, IAPR TC-12, or to override Flickr8K's).
    c.dataset.train_list = ""
    c.dataset.val_list = ""
    c.dataset.test_list = ""
    # Karpathy's COCO "restval" images (30,504) join train, as in most papers since 2015.
    c.dataset.merge_restval = True
    # folder: the captions file ("" = DATA_DIR/captions.jsonl or captions.csv).
    c.dataset.captions_file = ""
    # Images that cannot be decoded (truncated, corrupt): "skip" (counted, logged; a missing
    # or empty file drops the image, one found broken mid-run is replaced by a grey image)
    # or "error" (stop with the file's name).
    c.dataset.on_bad_image = "skip"
    # Words seen fewer times than this in the TRAINING captions map to <unk>. Our choice: 5,
    # the common threshold in this literature (neuraltalk, im2txt).
    c.dataset.min_count = 5
    # Captions are cut to this many words (plus start and end tokens). Our choice: 20 covers
    # over 95% of Flickr30K / COCO captions.
    c.dataset.max_words = 20
    # Sizes of the built-in shapes dataset's splits (ignored by other datasets).
    c.dataset.shapes_sizes = ConfigDict({"train": 8000, "val": 500, "test": 500, "novel": 500})
    c.dataset.seed = 0

    c.model = ConfigDict()
    c.model.embed_dim = 128  # paper: word embedding I
    c.model.word_dim = 256  # paper: word embedding II and recurrent layer
    c.model.multimodal_dim = 512  # paper: multimodal layer
    c.model.word_activation = "relu"  # paper: ReLU
    c.model.recurrent_activation = "relu"  # paper: ReLU
    c.model.multimodal_activation = "scaled_tanh"  # paper: 1.7159 tanh(2x/3)
    # Dropout on the multimodal layer while training. Not in the 2014 paper; our choice of 0.5
    # follows the authors' later code and every captioner since, against over-fitting.
    c.model.dropout_rate = 0.5
    # True zeroes the image input: the image-blind language-model baseline.
    c.model.zero_image = False
    # "bfloat16": the dense layers' matrix products (the softmax layer above all) in
    # bfloat16, accumulated in float32; parameters, optimiser state, the recurrence and the
    # loss stay float32 (mixed precision: for GPUs and TPUs).
    c.model.compute_dtype = "float32"

    c.encoder = ConfigDict()
    # "features": precomputed vectors (VGG-16 fc7 is 4096-d); "small_cnn": trained jointly;
    # "vgg16", "resnet50", "alexnet": a pretrained CNN on the images, run in the model.
    c.encoder.name = "features"
    c.encoder.features_dim = 4096  # width of the feature vectors I (VGG-16 / AlexNet fc7)
    # Pretrained CNNs: the converted weights file (data_prep/convert_weights.py).
    c.encoder.weights = ""
    # Which output is I: "" = fc7 (VGG-16, AlexNet; the papers') or pooled (ResNet-50).
    c.encoder.feature = ""
    # "" keeps the CNN frozen (the papers' usual setting); a layer name (e.g. fc6, conv5_1,
    # layer4) fine-tunes it and every later layer, at encoder.learning_rate (our choice:
    # 1e-5, a hundredth of the m-RNN's, so as not to wreck the pretrained features).
    c.encoder.fine_tune_from = ""
    c.encoder.learning_rate = 1e-5
    # Image size and the pixels' preprocessing: 0 / "" / () take the weights file's own
    # (torchvision: RGB, 256 then a 224 centre crop, ImageNet mean and std; Keras VGG-16:
    # BGR minus the mean).
    c.encoder.image_size = 0
    c.encoder.resize = "center_crop"
    c.encoder.crop_fraction = 0.0
    c.encoder.pixel_order = ""
    c.encoder.pixel_scale = 0.0
    c.encoder.pixel_mean = ()
    c.encoder.pixel_std = ()

    c.train = ConfigDict()
    c.train.seed = 0
    # Global batch of (image, caption) pairs, split across every device. Our choice.
    c.train.batch_size = 128
    # Captions per image in a training batch: the image's projection V_I I (and its CNN
    # features, when the CNN is trained) is computed once and used for all of them, as in
    # self-critical.pytorch's seq_per_img. 1 = independent (image, caption) pairs.
    c.train.captions_per_image = 1
    # Length buckets, in words (our choice): each epoch's captions are grouped by length and
    # a batch is padded only to the narrowest of these widths that holds its longest caption
    # (else to dataset.max_words); one compile per width. Flickr8K's lengths (median 10,
    # 90th percentile 16) fall about evenly into <= 9, 10-12, 13-15 and 16-20 words, so a
    # batch is about 10% padding instead of 40%. () pads every batch to dataset.max_words.
    c.train.length_buckets = (9, 12, 15)
    c.train.num_steps = 50_000
    # Adam with linear warm-up then cosine decay, gradients clipped by global norm. The paper
    # does not name its optimiser; Adam with clipping is the common choice and needs no tuning.
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 1000
    c.train.final_learning_rate_fraction = 0.05
    c.train.grad_clip_norm = 5.0
    # L2 regularisation of the weights (paper: yes; weight: our choice), added to the cost as
    # l2_weight * 0.5 * sum of squared weights (kernels and embeddings, not biases).
    c.train.l2_weight = 1e-6
    # True holds the training set (token ids and precomputed features; COCO at 4096-d float16
    # is about 1 GB) in every device's memory and gathers each batch there: the host sends
    # only row numbers. For GPUs and TPUs; needs features, not image files.
    c.train.device_data = False
    c.train.log_every = 100
    # How often the evaluators whose `every` is 0 run (validation perplexity, by default).
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    # Early stopping: stop after this many evaluations (every eval_every steps) in a row
    # without a better validation perplexity, the scalar that also picks the best checkpoint
    # (0 = never; train.num_steps is then the run's length). Our choice: 4, long enough to
    # ride out one noisy evaluation, short enough that little time goes into over-fitting.
    c.train.patience = 4
    c.train.max_checkpoints = 2
    # A step whose loss or gradients are NaN or Inf never changes the parameters (nor reaches
    # a checkpoint). "skip": skip its update and count it, and stop the run after
    # max_nonfinite_steps such steps in a row; "stop": stop at the first. Our choice: skip,
    # 10 (one bad batch is survivable; ten in a row is divergence: lower the learning rate).
    c.train.on_nonfinite = "skip"
    c.train.max_nonfinite_steps = 10
    # The logged scalar that picks the best checkpoint (and that early stopping watches), as
    # PREFIX/NAME of an evaluator below: "val/perplexity" (our default, kept from before:
    # the papers select by validation perplexity, it is the cheapest and least noisy, and no
    # measured run here showed another default better), or e.g. "val/CIDEr-D",
    # "val/BLEU-4", "val/image R@1". select_mode "auto" minimises perplexity, NLL, loss and
    # ranks and maximises everything else; "min" / "max" say it outright.
    c.train.select_by = "val/perplexity"
    c.train.select_mode = "auto"

    # What training optimises: "cross_entropy" (the paper's: the perplexity of the training
    # captions) or "scst", self-critical sequence training (Rennie et al., CVPR 2017): a
    # fine-tuning phase after cross-entropy training that raises the CIDEr-D of sampled
    # captions by REINFORCE (docs/scst.md). SCST starts from train.init_from (or --init-from).
    c.train.objective = "cross_entropy"
    # SCST's starting point: a work directory (its best checkpoint) or one step's folder
    # (RUN/checkpoints/1500). Read once, when the SCST run starts; a resumed run ignores it.
    c.train.init_from = ""
    c.train.scst = ConfigDict()
    # Captions sampled per image; each is rewarded against the mean of the image's others
    # (Luo 2020's "new self-critical"): 5, as there and in self-critical.pytorch.
    c.train.scst.samples = 5
    # The reward's baseline: "mean" (of the image's other samples; no extra decoding) or
    # "greedy" (the reward of the image's greedy caption: Rennie et al.'s original).
    c.train.scst.baseline = "mean"
    # The reward: CIDEr-D against the image's training references (document frequencies of
    # every training image's references, computed once), optionally mixed with BLEU-4, e.g.
    # reward=CIDEr-D,BLEU-4 reward_weights=1.0,0.5.
    c.train.scst.reward = ("CIDEr-D",)
    c.train.scst.reward_weights = (1.0,)
    # Adam at a constant rate, fresh optimiser state (self-critical.pytorch: 5e-5). Every
    # other training value (L2, clipping, evaluators, checkpoints, patience) is as above.
    c.train.scst.learning_rate = 5e-5
    # Longest sampled caption, in words (an end token may follow): 16, self-critical.pytorch's.
    c.train.scst.max_words = 16
    # Weight of an entropy bonus on the sampled words' distributions (0 = none, the papers').
    c.train.scst.entropy_weight = 0.0
    # The scalar that picks the best SCST checkpoint (train.select_by is cross-entropy's):
    # the validation CIDEr-D of greedy captions, what SCST optimises.
    c.train.scst.select_by = "val/CIDEr-D"

    # Evaluators run during training (mrnn_jax/evaluation/evaluators.py), each logging its
    # scalars as PREFIX/NAME to metrics.jsonl and TensorBoard. every: steps between runs, 0 = every
    # train.eval_every steps, -1 = never; each enabled one also runs at the last step.
    # num_images: the first N images of the split (0 = all).
    c.evaluators = ConfigDict()
    c.evaluators.perplexity = ConfigDict(
        {"kind": "perplexity", "split": "val", "prefix": "val", "every": 0}
    )
    # Coco-caption metrics of greedy (or beam) captions of 500 validation images: what
    # captioning work watches and often selects by. Scoring 500 captions with BLEU, ROUGE-L
    # and CIDEr-D took 3 s on a loaded 2-core CPU (2026-12-01); METEOR (add "METEOR") needs
    # Java and took 16 s more, so it is left to the final evaluation.
    c.evaluators.captions = ConfigDict(
        {
            "kind": "captions",
            "split": "val",
            "prefix": "val",
            "every": 0,
            "num_images": 500,
            "strategy": "greedy",
            "beam_size": 3,
            "metrics": ("BLEU", "ROUGE_L", "CIDEr"),
        }
    )
    # Retrieval R@1/5/10 and median rank, both directions, on 100 validation images and their
    # captions. Off by default: at the paper's size it scores 100 x 500 (sentence, image)
    # pairs, about 100 s on a CPU (a GPU does it in seconds); set every to turn it on.
    c.evaluators.retrieval = ConfigDict(
        {"kind": "retrieval", "split": "val", "prefix": "val", "every": -1, "num_images": 100}
    )

    # Consensus reranking (ICLR 2015 section 8; `mrnn evaluate --rerank consensus`,
    # run_captioning.py --rerank consensus, a captions evaluator's rerank="consensus"): the
    # n-best beam hypotheses reranked by their agreement with the captions of the nearest training
    # images. Values: the authors' mRNN-CR package (validated there on COCO): neighbours by
    # Euclidean distance between the model's projected features V_I I ("projection"; "cnn"
    # uses I), k = 60 neighbours, the mean of the m best-agreeing references (0 = theirs:
    # 125 for CIDEr, 175 for BLEU), 10 hypotheses (their beam of 10), CIDEr-D ("CIDEr") or
    # BLEU-4 ("BLEU").
    c.rerank = ConfigDict()
    c.rerank.features = "projection"
    c.rerank.num_neighbours = 60
    c.rerank.num_references = 0
    c.rerank.num_hypotheses = 10
    c.rerank.metric = "CIDEr"

    # The final evaluation (mrnn_jax/evaluation/final.py): when training ends, the best
    # checkpoint's parameters go through one captions evaluator per split (greedy, with the
    # split's perplexity), the same evaluators as above. batch_size is every evaluator's.
    c.eval = ConfigDict()
    c.eval.batch_size = 256
    # Splits evaluated (perplexity, greedy captions and their scores) when training ends.
    c.eval.splits = ("test",)
    # The coco-caption metrics of that final evaluation (METEOR needs Java on the PATH).
    c.eval.metrics = ("BLEU", "METEOR", "ROUGE_L", "CIDEr")
    # Longest caption generated, in words (every evaluator's, mrnn caption's and the API's
    # default).
    c.eval.max_decode_words = 20
    return c
