"""Load the price file shipped in the repository, so a fresh clone prices the models its docs name."""

from django.db import migrations


def load_shipped(apps, schema_editor):
    from pricing.loading import SHIPPED, apply_prices, parse_price_map, read_source

    parsed = parse_price_map(read_source(str(SHIPPED)))
    apply_prices(parsed.entries, effective_from=parsed.effective_from, source=f"pricing/data/{SHIPPED.name}",
                 price_model=apps.get_model("pricing", "Price"), notify=False)


class Migration(migrations.Migration):
    dependencies = [("pricing", "0001_initial")]
    operations = [migrations.RunPython(load_shipped, migrations.RunPython.noop)]
