"""The study-level `views:` block (`schema.ViewsConfig`) as build parameters of one method:
`views` for every retriever that trains with the view family, `index_views` for those that
index with pseudo-query views (the DSIs). It sits between `fixed` and a method's own `params`."""

from __future__ import annotations

from typing import Any

from bench.config.errors import StudyConfigError
from bench.config.schema import StudyFile
from vitdsi.retrievers.params import retriever_params


def study_views(sf: StudyFile, cls: type, source: str) -> dict[str, Any]:
    """The build parameters the file's `views:` block gives a method of retriever class `cls`
    ({} without a block, or for a retriever without views). `fixed` may not set them as well:
    the block is the study's one declaration of its training views."""

    if sf.views is None:
        return {}
    for key in ("views", "index_views"):
        if key in sf.fixed:
            raise StudyConfigError(
                f"{source}: field `fixed.{key}`: the study's `views:` block sets '{key}' of "
                "every method; set it there (or in a method's `params`), not in `fixed`"
            )
    names = {p.name for p in retriever_params(cls)}
    given = {"views": sf.views.strength, "index_views": sf.views.index_views}
    return {k: v for k, v in given.items() if k in names}
