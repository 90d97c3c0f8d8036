"""Per-project trigger settings and linked sources; the beat schedule built from them."""

from __future__ import annotations

import pytest

from labelloop.errors import InputError
from labelloop.pipelines.triggers import (
    effective_triggers,
    labelstudio_links,
    link_labelstudio,
    parse_cron,
    update_triggers,
)
from labelloop.projects import create_project, get_project


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", "25 > 23"),
        ("61 * * * *", "61 > 59"),
        ("0 2 * *", "5 fields"),
        ("0 0 32 * *", "32 > 31"),
        ("0 0 * * funday", "weekday"),
    ],
)
def test_bad_crontabs_are_refused_with_the_reason(expr, message):
    with pytest.raises(InputError, match=message):
        parse_cron(expr)


def test_crontab_fields():
    assert parse_cron("*/15 1-5 * * mon-fri") == {
        "minute": "*/15",
        "hour": "1-5",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "mon-fri",
    }


def test_project_settings_fall_back_to_the_defaults(ctx):
    with ctx.db.session() as s:
        p, _ = create_project(s, "cells", "segmentation", ["RBC"])
        eff = effective_triggers(p, ctx.settings)
        assert (eff.cron, eff.min_annotations, eff.active) == ("0 2 * * *", 20, True)
        update_triggers(p, {"cron": "30 3 * * *", "min_annotations": 5, "push_to": "labelstudio"})
    with ctx.db.session() as s:
        p = get_project(s, "cells")
        eff = effective_triggers(p, ctx.settings)
        assert (eff.cron, eff.min_annotations, eff.push_to) == ("30 3 * * *", 5, "labelstudio")
        update_triggers(p, {"cron": None})  # back to the default
        assert effective_triggers(p, ctx.settings).cron == ctx.settings.nightly_cron
        assert p.settings["triggers"] == {"min_annotations": 5, "push_to": "labelstudio"}


def test_bad_trigger_settings_change_nothing(ctx):
    with ctx.db.session() as s:
        p, _ = create_project(s, "cells", "segmentation", ["RBC"])
        with pytest.raises(InputError, match="cron: a crontab has 5 fields"):
            update_triggers(p, {"cron": "every night"})
        with pytest.raises(InputError, match="min_annotations"):
            update_triggers(p, {"min_annotations": 0})
        with pytest.raises(InputError, match="push_to must be one of"):
            update_triggers(p, {"push_to": "email"})
        with pytest.raises(InputError, match=r"unknown trigger settings \['colour'\]"):
            update_triggers(p, {"colour": "red"})
        assert "triggers" not in (p.settings or {})


def test_linking_a_label_studio_project_is_idempotent(ctx):
    with ctx.db.session() as s:
        p, _ = create_project(s, "cells", "segmentation", ["RBC"])
        link_labelstudio(p, "http://ls:8080/", 3, webhook_id=1)
        link_labelstudio(p, "http://ls:8080", 3, label_map={"rbc": "RBC"}, webhook_id=2)
        link_labelstudio(p, "http://ls:8080", 4)
    with ctx.db.session() as s:
        links = labelstudio_links(get_project(s, "cells"))
    assert links == [
        {"url": "http://ls:8080", "ls_project": 3, "label_map": {"rbc": "RBC"}, "webhook_id": 2},
        {"url": "http://ls:8080", "ls_project": 4},
    ]
