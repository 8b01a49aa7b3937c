"""Stage 3 of the pipeline: atlas regions and every per-region number.

:class:`Atlas` loads shipped and user atlases (label image + BIDS ``dseg.tsv`` table);
:mod:`anomaly.atlas.regions` owns region statistics, region tables, painting values
back onto regions, and the global cortical PET level.
"""

from anomaly.atlas.atlases import DEFAULT_ATLAS, Atlas, atlas_dir, list_atlases
from anomaly.atlas.regions import (NON_CORTICAL, RegionStats, cortex_mask, global_cortical_pet, paint_regions,
                                   region_table, round_table)

__all__ = ["DEFAULT_ATLAS", "NON_CORTICAL", "Atlas", "RegionStats", "atlas_dir", "cortex_mask", "global_cortical_pet",
           "list_atlases", "paint_regions", "region_table", "round_table"]
