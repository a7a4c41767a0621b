"""transformers' shared contract tests run against SETR: `ModelTesterMixin` (one class per decoder), `ConfigTester`
(`test_config` of each) and `ImageProcessingTestMixin` with `PostProcessSemanticSegmentationTestMixin` (both
processor backends), loaded from the installed transformers version's sdist by `upstream_transformers_tests`
(downloaded once and cached; this module is skipped, saying why, only when that download is impossible).

The testers follow the shape of transformers' ViT, DPT and SegFormer testers. This module skips nothing itself;
`test_model_get_set_embeddings` is overridden as ViT's and DPT's testers do (the input embedding is the patch
embedding, a module rather than a token table). The mixins skip these, for each decoder, for the same reasons as
for ViT, DPT and SegFormer (their message in brackets; measured with transformers 5.23 on a CPU machine):

Not applicable to a pixel-input ViT segmenter:
- no token embeddings: test_inputs_embeds, test_inputs_embeds_matches_input_ids ["doesn't use `inputs_embeds`"];
  test_resize_tokens_embeddings, test_resize_embeddings_untied, test_resize_embeddings_untied_no_reinit_on_post_init
  [`test_resize_embeddings = False`, set as ViT, DPT and SegFormer set it]; test_resize_position_vector_embeddings
  ["no position embeddings" to resize through the embeddings API]; test_enable_input_require_grads_with_gradient_
  checkpointing [the input embedding (patch embedding) has no `weight`, as ViT's];
- not composite: test_attn_implementation_composite_models, test_sdpa_can_dispatch_composite_models,
  test_can_set_attention_dynamically_composite_model, test_internal_model_config_and_subconfig_are_same;
- no RoPE: test_model_rope_with_partial_rotation, test_model_rope_scaling_frequencies,
  test_model_rope_scaling_from_config_{0_linear,1_dynamic,2_yarn}, test_vision_axial_rope;
- no mixture of experts: test_moe_models_record_router_logits, test_output_router_logits_from_config,
  test_eager_matches_batched_and_grouped_inference_{0_fp16,1_fp32,2_bf16} ["does not support grouped_mm"];
- no language-model head: test_causal_lm_loss_honors_shift_labels, test_encoder_decoder_loss_no_double_shift;
- no sliding-window attention: test_sliding_window_mask; no tensor-parallel plan: test_tp_plan_matches_params,
  test_tied_head_has_a_tp_plan_entry; no `_keep_in_fp32_modules`: test_keep_in_fp32_modules,
  test_keep_in_fp32_modules_exist; no checkpoint key conversion mapping: test_can_load_from_already_mapped_keys,
  test_reverse_loading_mapping.

Not available on this machine (CPU only, RUN_SLOW unset):
- accelerator: test_can_load_with_device_context_manager, test_can_load_with_global_device_set, test_cpu_offload,
  test_disk_offload_bin, test_disk_offload_safetensors, test_flex_attention_with_grads, test_sdpa_can_compile_dynamic,
  test_sdpa_can_dispatch_on_flash; several accelerators: test_model_parallelism; MPS:
  test_flash_attn_kernels_mps_inference_equivalence;
- Flash Attention 2/3/4: test_flash_attn_{2,3,4}_* (16 tests); the `kernels` library:
  test_flash_attn_kernels_inference_equivalence, test_kernels_can_load_without_crashing; DeepSpeed:
  test_resize_{tokens_embeddings,embeddings_untied}_with_deepspeed{,_multi_gpu};
- `@slow`: test_torch_compile_for_training, and for the processors test_can_compile_torchvision_backend,
  test_pil_can_run_without_torchvision.

Image processing, as for SegFormer: test_image_processor_preprocess_arguments [v5 processors declare no
`_valid_processor_keys`], test_override_instance_attributes_does_not_affect_other_instances [`image_mean` is a tuple].
"""

import os
import unittest
import warnings

import numpy as np
import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
from transformers.utils import is_torchvision_available

from transformers_setr import SetrConfig, SetrForSemanticSegmentation, SetrImageProcessorPil, SetrModel

import helpers.upstream_transformers_tests as upstream_transformers_tests

try:
    with warnings.catch_warnings():
        # The upstream modules mark tests for transformers' own CI (torch_compile_test, flash_attn_test, ...); those
        # marks are registered in transformers' conftest, not here.
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        upstream = upstream_transformers_tests.load()
except upstream_transformers_tests.UpstreamTestsUnavailable as error:
    pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)

UPSTREAM_SEED = int(os.environ.get("SETR_UPSTREAM_TEST_SEED", "0"))  # another seed: the same tests on other inputs
ModelTesterMixin = upstream.test_modeling_common.ModelTesterMixin
floats_tensor = upstream.test_modeling_common.floats_tensor
ids_tensor = upstream.test_modeling_common.ids_tensor
ConfigTester = upstream.test_configuration_common.ConfigTester
ImageProcessingTester = upstream.test_image_processing_common.ImageProcessingTester
ImageProcessingTestMixin = upstream.test_image_processing_common.ImageProcessingTestMixin
PostProcessSemanticSegmentationTestMixin = (
    upstream.test_image_processing_common.PostProcessSemanticSegmentationTestMixin
)


class SetrModelTester:
    """A tiny SETR: 32x32 inputs (a 2x2 patch grid), 2 layers of width 32 (the mixin allows at most 2), both feeding
    the decoder."""

    def __init__(
        self,
        parent,
        decoder_type: str = "pup",
        batch_size: int = 2,
        image_size: int = 32,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        intermediate_size: int = 37,
        out_indices: tuple[int, ...] = (0, 1),
        num_labels: int = 3,
    ):
        self.parent = parent
        self.decoder_type = decoder_type
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.out_indices = list(out_indices)
        self.num_labels = num_labels
        self.is_training = True
        num_patches = (image_size // patch_size) ** 2
        # MLA drops the cls token before the first layer.
        self.seq_length = num_patches + (decoder_type != "mla")

    def get_config(self) -> SetrConfig:
        return SetrConfig(
            decoder_type=self.decoder_type,
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            out_indices=self.out_indices,
            decoder_channels=len(self.out_indices) * 8 if self.decoder_type == "mla" else 16,
            mla_channels=8,
            mla_neck_channels=16,
            # MLA: an auxiliary head per neck output; Naive/PUP: one on the first feature level.
            auxiliary_in_indices=list(range(len(self.out_indices))) if self.decoder_type == "mla" else [0],
            auxiliary_channels=16,
            num_labels=self.num_labels,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def logits_size(self) -> int:
        # PUP up-samples x2 per stage (4 stages: back to the input size); Naive and MLA x4 from the patch grid.
        grid = self.image_size // self.patch_size
        return grid * 16 if self.decoder_type == "pup" else grid * 4

    def create_and_check_model(self, config, pixel_values, labels):
        model = SetrModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(result.last_hidden_state.shape, (self.batch_size, self.seq_length, self.hidden_size))

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels):
        model = SetrForSemanticSegmentation(config).eval()
        size = self.logits_size()
        with torch.no_grad():
            result = model(pixel_values)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, size, size))
        result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, (self.batch_size, self.num_labels, size, size))
        self.parent.assertGreater(result.loss.item(), 0.0)


# transformers lists each model's base class in MODEL_MAPPING_NAMES, and the mixin reads it to tell base models (no
# loss, no training tests) from head models; registering with AutoModel does not touch that static table.
MODEL_MAPPING_NAMES.setdefault(SetrConfig.model_type, SetrModel.__name__)


class _SetrModelTestBase(ModelTesterMixin):
    decoder_type = "pup"
    all_model_classes = (SetrModel, SetrForSemanticSegmentation)
    test_resize_embeddings = False
    has_attentions = True

    def setUp(self):
        # The mixin draws inputs from an unseeded module-level `random.Random`: seed it, so every run sees the same.
        upstream.test_modeling_common.global_rng.seed(UPSTREAM_SEED)
        self.model_tester = SetrModelTester(self, decoder_type=self.decoder_type)
        self.config_tester = ConfigTester(
            self, config_class=SetrConfig, has_text_modality=False, hidden_size=37, num_attention_heads=1
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_semantic_segmentation(self):
        self.model_tester.create_and_check_for_semantic_segmentation(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        # As ViT's and DPT's testers: the input embeddings are the patch embedding (a module, not a token table), and
        # there are no output embeddings.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
            self.assertIsNone(model.get_output_embeddings())


class SetrNaiveModelTest(_SetrModelTestBase, unittest.TestCase):
    decoder_type = "naive"


class SetrPupModelTest(_SetrModelTestBase, unittest.TestCase):
    decoder_type = "pup"


class SetrMlaModelTest(_SetrModelTestBase, unittest.TestCase):
    decoder_type = "mla"


class SetrImageProcessingTester(ImageProcessingTester):
    """Small images resized to one fixed size (the mixin stacks batches of random sizes, which SETR's keep-ratio
    resize refuses without padding, as mmsegmentation evaluates one image at a time), so the mixin runs in seconds."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 18, "width": 20})
        kwargs.setdefault("num_labels", 3)
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("do_reduce_labels", False)
        super().__init__(parent, batch_size=7, num_channels=3, min_resolution=30, max_resolution=80, **kwargs)

    def _get_image_processing_classes(self) -> dict[str, type]:
        # Upstream infers the model from the test file's folder (tests/models/<model>/); SETR's are registered here.
        classes = {"pil": SetrImageProcessorPil}
        if is_torchvision_available():
            from transformers_setr import SetrImageProcessor

            classes["torchvision"] = SetrImageProcessor
        return classes


class SetrImageProcessingTest(ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase):
    image_processor_tester_class = SetrImageProcessingTester

    def setUp(self):
        np.random.seed(UPSTREAM_SEED)  # the mixin's random images come from numpy's global generator
        super().setUp()
