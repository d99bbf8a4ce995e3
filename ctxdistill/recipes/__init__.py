"""One file per method; each exposes `run(cfg, **inputs)` and its config `DEFAULTS`."""

DOC_RECIPES = ("disc", "finetune", "finetune-kl", "lora-finetune", "knowledge")  # learn from --docs
RECIPES = ("offline", "onpolicy", *DOC_RECIPES)


def recipe_defaults(name: str) -> dict:
    """Config values a recipe starts from, before --config and --set."""
    if name == "disc":
        from ctxdistill.recipes import disc

        return dict(disc.DEFAULTS)
    if name == "knowledge":
        from ctxdistill.recipes import knowledge

        return dict(knowledge.DEFAULTS)
    if name == "onpolicy":
        from ctxdistill.recipes import onpolicy

        return dict(onpolicy.DEFAULTS)
    if name in DOC_RECIPES:
        from ctxdistill.recipes import baselines

        return dict(baselines.DEFAULTS[name])
    return {}
