from tracetune.runtime.logs import log_to

log_to(snakemake.log[0])

from tracetune.curate import curate_to_files, write_curation_report

if snakemake.rule == "curation_report":
    write_curation_report(list(snakemake.input.stats), snakemake.output[0])
else:
    curate_to_files(
        snakemake.wildcards.task,
        snakemake.input.raw,
        snakemake.output.traces,
        snakemake.output.stats,
        check=snakemake.params.check,
        edits=list(snakemake.input.edits),
        added=list(snakemake.input.added),
        rejected=snakemake.params.rejected,
        kept=snakemake.params.kept,
        system_prompt=snakemake.params.system_prompt,
        keep_system_prompt=snakemake.params.curate["keep_system_prompt"],
        drop_unrecovered_tool_errors=snakemake.params.curate["drop_unrecovered_tool_errors"],
    )
