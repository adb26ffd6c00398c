"""Where each test goes: source file -> (default target, {test: target | "DROP"})."""

MF = "test_modeling_florence.py"
MC = "test_modeling_coswin.py"
CF = "test_configuration_florence.py"
IL = "test_image_loading_florence.py"
IP = "test_image_processing_florence.py"
VP = "test_video_processing_florence.py"
TK = "test_tokenization_florence.py"
PF = "test_processing_florence.py"
MAP = {
    "test_contracts.py": (MF, {
        "test_auto_backbone_loads_the_encoder_from_every_folder": MC,
        "test_fp32_pixels_are_cast_to_the_model_dtype": "DROP",  # test_common: bf16_loading_casts_fp32_inputs
    }),
    "test_modeling.py": (MF, {
        **{t: CF for t in ["test_every_preset_loads_and_unknown_preset_is_named",
                           "test_preset_sub_config_overrides_merge_into_the_preset",
                           "test_florence_huge_matches_the_paper_sizes", "test_presets_ship_as_package_data",
                           "test_invalid_vision_config_names_the_field", "test_head_widths_are_checked_when_the_model_is_built",
                           "test_invalid_text_config_names_the_field"]},
        **{t: MC for t in ["test_coswin_uses_cvt_convolutional_embeddings", "test_one_instance_runs_at_any_resolution",
                           "test_small_windows_read_the_exact_sub_table", "test_backbone_through_auto_backbone"]},
        "test_unicl_with_distinct_labels_is_clip_loss_as_a_sum": "test_loss_florence.py",
        "test_unicl_loss_follows_florence_equations": "test_loss_florence.py",
        # covered by test_common: sdpa_equals_eager, gradient_checkpointing_gives_the_same_gradients,
        # bf16_loading_casts_fp32_inputs + meta_device_init
        "test_sdpa_and_eager_attention_agree": "DROP",
        "test_gradient_checkpointing_gives_the_same_gradients": "DROP",
        "test_bfloat16_loading_and_meta_device_init": "DROP",
    }),
    "test_untrusted_inputs.py": (IL, {
        **{t: IP for t in ["test_extreme_aspect_ratio_costs_what_the_crop_costs",
                           "test_wide_images_match_clip_exactly_or_within_a_pixel", "test_uncropped_resize_caps_the_long_side"]},
        "test_processor_and_video_urls_need_the_opt_in": PF,
        **{t: VP for t in ["test_video_converts_only_sampled_frames", "test_video_frame_count_and_frame_size_are_limited",
                           "test_large_video_frames_are_scaled_when_converted", "test_extreme_aspect_video_is_cut_before_resizing"]},
        **{t: TK for t in ["test_special_token_strings_give_open_clip_ids",
                           "test_florence_tokenizer_reads_special_strings_as_text",
                           "test_broken_tokenizer_folders_fail_naming_the_file"]},
    }),
    "test_processing.py": (PF, {
        "test_shipped_tokenizer_matches_open_clip_ids": TK,
        "test_truncation_keeps_end_of_text_last": TK,
        "test_builder_reproduces_the_shipped_files": "test_build_tokenizer.py",
        "test_image_processor_matches_clip": IP,
        "test_image_processor_options_and_errors": IP,
        "test_video_processor_decodes_samples_and_pads": VP,
        "test_video_processor_views_and_errors": VP,
    }),
    "test_conversion.py": ("test_convert_swin.py", {
        "test_clip_text_from_transformers_matches": "test_convert_clip_text.py",
        "test_clip_text_from_open_clip_matches": "test_convert_clip_text.py",
        "test_clip_text_conversion_refuses_missing_layers_and_inconsistent_heads": "test_convert_clip_text.py",
        "test_converters_exit_non_zero_when_they_wrote_nothing": "test_checkpoint_io.py",
    }),
    "test_data_loaders.py": ("test_data_florence.py", {}),
    "test_detection.py": ("test_modeling_florence_detection.py", {
        **{t: "test_configuration_florence_detection.py" for t in [
            "test_invalid_config_values_raise_naming_the_field",
            "test_open_vocabulary_config_needs_projection_dim_and_serialises", "test_presets_build_the_papers_head"]},
        **{t: "test_image_processing_florence_detection.py" for t in [
            "test_processor_resizes_pads_and_converts_coco_annotations", "test_processor_pads_small_images_up_to_the_multiple",
            "test_processor_rejects_bad_boxes", "test_processor_rejects_empty_inputs",
            "test_post_processing_scores_nms_and_pixel_boxes"]},
        "test_coco_metrics_of_perfect_and_shifted_detections": "test_evaluation_florence_detection.py",
        "test_finetune_script_trains_evaluates_saves_and_resumes": "test_training_florence_detection.py",
    }),
    "test_finetuning.py": ("test_modeling_florence_classification.py", {
        "test_data_errors_name_the_missing_columns": "test_training_florence_classification.py",
        "test_transforms_collators_and_metric": "test_training_florence_classification.py",
        "test_classification_and_lora_scripts_run_and_save_loadable_models": "test_training_florence_classification.py",
        "test_retrieval_two_processes_equal_one_on_the_same_global_batch": "test_training_florence_classification.py",
    }),
    "test_hub_export.py": ("test_export_for_hub.py", {}),
    "test_pipelines.py": ("test_pipelines_florence.py", {}),
    "test_model_cards.py": ("test_model_card.py", {}),
    "test_pretraining.py": ("test_pretraining_florence.py", {
        "test_metrics_on_constructed_cases": "test_evaluation_florence.py",
    }),
    "test_recipes.py": ("test_recipe_florence.py", {}),
    "test_video_model.py": ("test_modeling_florence_video.py", {
        "test_invalid_video_config_names_the_field": "test_configuration_florence_video.py",
        "test_video_config_defaults_presets_and_roundtrip": "test_configuration_florence_video.py",
        "test_sdpa_equals_eager_forward_and_gradients": "DROP",  # test_common: sdpa_equals_eager (+ gradients)
        "test_gradient_checkpointing_gives_the_same_gradients": "DROP",  # test_common
        "test_trainer_multi_view_evaluation_averages_each_videos_views": "test_evaluation_florence_video.py",
        "test_finetune_video_script_runs_with_multi_view_evaluation": "test_training_florence_video.py",
    }),
    "test_vqa.py": ("test_modeling_florence_vqa.py", {
        **{t: "test_configuration_florence_vqa.py" for t in [
            "test_presets_build_the_papers_adapter", "test_invalid_values_raise_naming_the_field",
            "test_config_round_trips_and_loads_through_autoconfig", "test_invalid_image_stream_settings_raise"]},
        **{t: "test_processing_florence_vqa.py" for t in [
            "test_answer_normalisation", "test_answer_vocabulary_and_soft_scores",
            "test_processor_returns_pairs_and_soft_labels_and_counts_dropped_answers", "test_processor_bad_input",
            "test_processor_saves_its_answer_vocabulary", "test_processor_reads_one_image_and_datasets_columns"]},
        "test_official_vqa_accuracy": "test_evaluation_florence_vqa.py",
        "test_a_tiny_model_learns_to_answer_from_the_image": "test_training_florence_vqa.py",
        "test_finetune_optimizer_scales_each_tower_and_skips_decay_on_norms_and_biases": "test_training_florence_vqa.py",
        "test_finetune_script_trains_evaluates_and_saves": "test_training_florence_vqa.py",
    }),
}

def _doc(target):
    stem = target[len("test_"):-3]
    folder = "conversion" if stem.startswith(("convert_", "checkpoint_io", "build_tokenizer", "export_for_hub")) else "modeling_florence"
    return f"Tests of `{folder}/{stem}.py`."

DOCS = {}
for _default, _over in MAP.values():
    for _t in [_default, *_over.values()]:
        if _t and _t != "DROP":
            DOCS[_t] = _doc(_t)
