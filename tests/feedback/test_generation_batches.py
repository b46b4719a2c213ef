"""A batch of generations is one fixed handful of queries, whatever its size, and answers exactly as
the same items sent one by one would: repeats within the batch are one row, an external id can be
given to a row later in the batch, and any conflict leaves nothing of the batch saved."""

from __future__ import annotations

import pytest

from feedback.models import Generation, Prompt
from feedback.services.generations import GenerationConflict, GenerationInput, create_generation, create_generations
from projects.services import create_project

pytestmark = pytest.mark.django_db


def item(prompt: str, completion: str, external_id: str | None = None) -> GenerationInput:
    return GenerationInput(prompt=prompt, completion=completion, external_id=external_id)


# Item by item, 600 items were about 5000 queries. SQLite splits a bulk INSERT into statements of
# at most 999 values, so its count grows a little with the batch; PostgreSQL's stays at about 9.
FEW_QUERIES = 30


def test_a_large_batch_costs_a_few_queries_not_several_per_item(django_assert_max_num_queries):
    # 600 items over 45 prompts; every tenth one repeats the item before it, without an external id.
    items = []
    for i in range(600):
        repeat = i % 10 == 9
        items.append(
            GenerationInput(prompt=items[-1].prompt, completion=items[-1].completion)
            if repeat
            else item(f"prompt {i % 50}", f"completion {i}", f"ext-{i}")
        )
    with django_assert_max_num_queries(FEW_QUERIES):
        results = create_generations(items)

    assert len(results) == 600
    assert Generation.objects.count() == 540 and Prompt.objects.count() == 45
    for i, (generation, created) in enumerate(results):
        assert generation.pk is not None and generation.completion == items[i].completion
        if i % 10 == 9:  # the repeat: the earlier item's row, not created
            assert not created and generation.pk == results[i - 1][0].pk
        else:
            assert created and generation.external_id == f"ext-{i}"

    # The same batch again: every row known, none created.
    with django_assert_max_num_queries(FEW_QUERIES):
        again = create_generations(items)
    assert [generation.pk for generation, _ in again] == [generation.pk for generation, _ in results]
    assert not any(created for _, created in again)


def test_a_later_item_names_a_row_of_the_same_batch_or_of_an_earlier_one():
    earlier = create_generation(item("p", "known"))[0]
    results = create_generations([item("q", "new"), item("q", "new", "ext-new"), item("p", "known", "ext-known")])
    assert results[1] == (results[0][0], False)
    assert Generation.objects.get(pk=results[0][0].pk).external_id == "ext-new"
    assert results[2][0].pk == earlier.pk and not results[2][1]
    assert Generation.objects.get(pk=earlier.pk).external_id == "ext-known"


@pytest.mark.parametrize(
    "batch, message",
    [
        # One external id for two contents, both in the batch.
        ([item("a", "1", "ext"), item("b", "2", "ext")], "already names another generation"),
        # One content under two external ids, both in the batch.
        ([item("a", "1", "ext-1"), item("a", "1", "ext-2")], "already stored under another external_id"),
        # The batch's first item collides with a stored row's id.
        ([item("c", "3"), item("a", "other", "stored")], "already names another generation"),
    ],
)
def test_a_conflict_anywhere_saves_nothing_of_the_batch(batch, message):
    stored = create_generation(item("s", "stored row", "stored"))[0]
    with pytest.raises(GenerationConflict, match=message):
        create_generations(batch)
    assert list(Generation.objects.values_list("pk", flat=True)) == [stored.pk]
    assert Prompt.objects.count() == 1


def test_another_projects_rows_are_neither_found_nor_in_the_way():
    other = create_project("other")
    theirs = create_generation(item("p", "c", "ext"), other)[0]
    ((ours, created),) = create_generations([item("p", "c", "ext")])
    assert created and ours.pk != theirs.pk
    assert ours.project.name != "other" and ours.prompt_id != theirs.prompt_id
