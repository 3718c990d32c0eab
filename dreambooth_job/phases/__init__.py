"""The job's phases, one module each, all working on one `RunContext` (context.py).

job.py lists them in order; each phase reads what earlier ones left in the context and adds its
own part (and its part of result.json, `context.result`):

    photos.download, photos.validate -> context.photos
    model.load                       -> context.pipeline, .identifier, .prompts
    class_images.prepare             -> context.class_images   (with --prior-preservation)
    training.train                   -> context.trainer, .steps_done
    samples.final                    -> the last grid, the model in the work directory
    evaluation.evaluate              -> result.metrics        (with --evaluate)
    publish.upload, publish.publish  -> the model, result.json, then the completion marker
"""
