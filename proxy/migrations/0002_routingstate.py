# The admin page for the routing state (proxy.admin.RoutingState): no table of its own.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('proxy', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='RoutingState',
            fields=[
            ],
            options={
                'verbose_name': 'routing state (cooldowns and limits)',
                'verbose_name_plural': 'routing state (cooldowns and limits)',
                'proxy': True,
                'indexes': [],
                'constraints': [],
            },
            bases=('proxy.usagerecord',),
        ),
    ]
