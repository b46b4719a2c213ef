"""Vote's annotator and API-client indexes without their NULLs (and no LIKE index on the key's id).

Every vote wrote an entry into both plain indexes although one of the two columns is always empty,
and PostgreSQL kept a third, varchar_pattern_ops index on the character API-client id that no query
uses. A plain AlterField(db_index=False) would also drop and re-add both foreign keys on PostgreSQL,
re-checking every vote under a lock that blocks new votes; so the database side only drops the
plain indexes, found by introspection (their names are generated and differ by backend).
"""

from django.conf import settings
from django.db import migrations, models

PLAIN_INDEXED_COLUMNS = ("annotator_id", "api_client_id")


def drop_plain_indexes(apps, schema_editor):
    vote = apps.get_model("feedback", "Vote")
    table = vote._meta.db_table
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(cursor, table)
    for name, details in constraints.items():
        single_column = len(details["columns"] or []) == 1 and details["columns"][0] in PLAIN_INDEXED_COLUMNS
        if single_column and details["index"] and not details["unique"] and not details["primary_key"]:
            schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}")


def restore_plain_indexes(apps, schema_editor):
    vote = apps.get_model("feedback", "Vote")
    for column in PLAIN_INDEXED_COLUMNS:
        field = next(field for field in vote._meta.concrete_fields if field.column == column)
        schema_editor.execute(schema_editor._create_index_sql(vote, fields=[field]))


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0011_jobs"),
        ("projects", "0004_drop_plaintext_tokens"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="vote",
                    name="annotator",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.SET_NULL,
                        related_name="votes",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="vote",
                    name="api_client",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="votes",
                        to="projects.apiclient",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_plain_indexes, restore_plain_indexes)],
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                condition=models.Q(("annotator__isnull", False)), fields=["annotator"], name="vote_annotator"
            ),
        ),
        migrations.AddIndex(
            model_name="vote",
            index=models.Index(
                condition=models.Q(("api_client__isnull", False)), fields=["api_client"], name="vote_api_client"
            ),
        ),
    ]
