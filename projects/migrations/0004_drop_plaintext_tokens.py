"""Drop the table of the old DRF user tokens (rest_framework.authtoken, no longer installed).

Those tokens were stored in clear text; leaving the table behind would keep every product app's
old secret readable by anyone with database access. They stopped working when API keys replaced
them (create project keys: `manage.py create_api_key`), so nothing is lost.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("projects", "0003_role_groups")]

    operations = [
        migrations.RunSQL("DROP TABLE IF EXISTS authtoken_token", reverse_sql=migrations.RunSQL.noop),
    ]
