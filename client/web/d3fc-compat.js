// Lets @perspective-dev/viewer-d3fc 4.4.1 (the newest published; there is no
// 5.x release) register with <perspective-viewer> 5.5.1.
//
// Viewer 5.x reads a plugin's settings once, from `get_static_config()`;
// d3fc 4.x exposes them as separate getters (name, category, select_mode,
// min_config_columns, config_column_names, max_cells, max_columns,
// group_rollups), so its registration fails with "get_static_config is not
// a function". The viewer's `registerPlugin` is read-only, and d3fc
// registers each chart right after defining its element, so `loadD3fc`
// gives each d3fc element class a `get_static_config` as it is defined
// (through a `customElements.define` wrapper that is in place only while
// the plugin module loads). Other plugins are left alone.

const PREFIX = "perspective-viewer-d3fc-";
const ROLLUPS = ["rollup", "flat", "total"];

function staticConfig() {
    const rollups = (this.group_rollups ?? []).filter((m) => ROLLUPS.includes(m));
    return {
        name: this.name,
        category: this.category ?? null,
        select_mode: this.select_mode ?? "select",
        min_config_columns: this.min_config_columns ?? null,
        config_column_names: this.config_column_names ?? [],
        max_cells: this.max_cells ?? null,
        max_columns: this.max_columns ?? null,
        group_rollup_modes: rollups.length ? rollups : null,
        priority: this.priority ?? 0,
    };
}

export async function loadD3fc(url) {
    const registry = window.customElements;
    const define = registry.define;
    registry.define = function (name, cls, options) {
        if (name.startsWith(PREFIX) && typeof cls.prototype.get_static_config !== "function") {
            cls.prototype.get_static_config = staticConfig;
        }
        return define.call(this, name, cls, options);
    };
    try {
        await import(url);
    } finally {
        registry.define = define;
    }
}
