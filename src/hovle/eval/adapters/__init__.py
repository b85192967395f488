"""hovle models inside other evaluation harnesses: lmms-eval (``lmms_eval``) and VLMEvalKit
(``vlmevalkit``). Each module imports its harness, which is installed separately."""


def lmms_eval_models():
    """lmms-eval's ``lmms_eval.models`` entry point: the model id ``hovle`` and its class.

    It lives here, away from the model class, because lmms-eval reads its entry points while its
    own model package is still being imported."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id="hovle", simple_class_path="hovle.eval.adapters.lmms_eval.HoVLELMMs")]
