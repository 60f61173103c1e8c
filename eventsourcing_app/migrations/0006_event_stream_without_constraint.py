"""Events keep their stream without a database foreign key or a plain stream index (see Event.stream)."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('eventsourcing_app', '0005_outbox_and_sagas'),
    ]

    operations = [
        migrations.AlterField(
            model_name='event',
            name='stream',
            field=models.ForeignKey(db_column='stream_id', db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='events', to='eventsourcing_app.stream', verbose_name='stream'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(fields=['stream'], name='es_event_stream_prefix_idx', opclasses=['varchar_pattern_ops']),
        ),
    ]
