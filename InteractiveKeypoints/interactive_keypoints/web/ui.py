"""The page: the slice view on the left, the landmark panel on the right (Vuetify 3)."""

from __future__ import annotations

from trame.widgets import client, html
from trame_vuetify.ui.vuetify3 import VAppLayout
from trame_vuetify.widgets import vuetify3 as v3

from ..conventions import FIXED_COLOR, POINTS_CSV, POINTS_JSON, PREDICTED_COLOR, hex_color

TABLE_HEADERS = [
    {"title": "Landmark", "key": "name"},
    {"title": "x", "key": "x", "align": "end"},
    {"title": "y", "key": "y", "align": "end"},
    {"title": "State", "key": "state"},
    {"title": "Conf.", "key": "confidence", "align": "end"},
    # the model's check-next score (higher = check first); empty for fixed points. Click to sort.
    {"title": "Check", "key": "score", "align": "end"},
]
MEASUREMENT_HEADERS = [
    {"title": "Measurement", "key": "measurement"},
    {"title": "Value", "key": "value", "align": "end"},
    {"title": "Unit", "key": "unit"},
    {"title": "Class", "key": "class"},
]
PREDICTED_COLOUR = hex_color(PREDICTED_COLOR)  # the one palette (conventions), as the view draws them
FIXED_COLOUR = hex_color(FIXED_COLOR)
NEXT_COLOUR = "#ff3333"  # mrml_logic.NEXT_POINT_COLOR: the halo around the point to check next

# trame-rca (2.11.8) leaves the promise of its view-resize call unhandled. When a page is
# leaving (reload, tab closed) that call fails with wslink's "connection not open" and
# Chromium reports an uncaught error on every such page. Only wslink's rejection of a call
# made after the connection closed (code -32099, "connection not open") is quietened, and it
# stays visible as a warning; any other unhandled rejection is still an error. Remove this
# when trame-rca catches that rejection itself.
QUIET_CALLS_AFTER_DISCONNECT_JS = """
window.addEventListener('unhandledrejection', (event) => {
  const reason = event.reason;
  if (reason && reason.code === -32099 && /connection not open/.test(String(reason.message))) {
    event.preventDefault();
    console.warn('after the connection closed: ' + reason.message);
  }
});
"""


def build_ui(app) -> VAppLayout:
    ctrl = app.server.controller
    with VAppLayout(app.server, full_height=True) as layout:
        client.Script(QUIET_CALLS_AFTER_DISCONNECT_JS)
        _app_bar(app, ctrl)
        _side_panel(app, ctrl)
        with v3.VMain(), html.Div(style="position: relative; width: 100%; height: calc(100vh - 48px);"):
            app.layout_manager.initialize_layout_grid(layout)
        # Positions of every point in image and view pixels (read by the browser test).
        html.Pre("{{ ik_debug }}", id="ik-debug", style="display: none;")
    return layout


def _app_bar(app, ctrl):
    upload = ctrl.trigger_name(app.upload)
    # The size check runs in the browser too: an oversized file never leaves the page.
    on_change = (
        "$event.target.files && $event.target.files.length && "
        "($event.target.files[0].size > ik_max_file_bytes "
        f"? (ik_message = $event.target.files[0].name + ' is larger than the limit (' + ik_limits + ')', "
        "ik_message_type = 'error') "
        f": trigger('{upload}', [$event.target.files]))"
    )
    with v3.VAppBar(density="compact"):
        html.Div("InteractiveKeypoints", classes="text-h6 ml-4 mr-6")
        html.Span(
            "{{ ik_image_name }} {{ ik_image_size ? '(' + ik_image_size + ')' : '' }}",
            id="ik-image-name",
            classes="text-body-2 mr-4",
        )
        v3.VSpacer()
        v3.VFileInput(
            id="ik-upload",
            label="Open image",
            prepend_icon="mdi-file-upload",
            density="compact",
            hide_details=True,
            style="max-width: 220px;",
            disabled=("ik_busy",),
            change=on_change,
        )
        if app.data_root is not None:
            _server_images(app)


def _server_images(app):
    """The data root's images, as a list to pick from (no free text: a path typed here would be
    refused anyway, and the list shows what there is)."""
    v3.VAutocomplete(
        v_model=("ik_server_choice",),
        items=("ik_server_images",),
        id="ik-server-image",
        label="Image on the server",
        no_data_text="no images under the server's data root",
        density="compact",
        hide_details=True,
        style="max-width: 320px; min-width: 220px;",
        classes="ml-2",
    )
    v3.VBtn(
        "Open",
        id="ik-open-server-image",
        click=app.open_server_image,
        disabled=("ik_busy || !ik_server_choice",),
        variant="tonal",
        classes="mx-2",
    )


def _button(label: str, element_id: str, icon: str, disabled: str, click, **props):
    """A button of the side panel; ``disabled`` is a JavaScript expression of the state."""
    return v3.VBtn(label, id=element_id, prepend_icon=icon, disabled=(disabled,), click=click, **props)


def _side_panel(app, ctrl):
    download_json = ctrl.trigger_name(lambda: app.download(POINTS_JSON))
    download_csv = ctrl.trigger_name(lambda: app.download(POINTS_CSV))
    with v3.VNavigationDrawer(location="right", permanent=True, width=510):
        with html.Div(classes="pa-3"):
            with html.Div(classes="d-flex flex-wrap ga-2"):
                # Detecting again starts a new history: ask before dropping the user's corrections.
                _button(
                    "Detect",
                    "ik-detect",
                    "mdi-target",
                    disabled="ik_busy",
                    click="(!ik_rows.some(r => r.state === 'user-fixed') || "
                    "window.confirm('Detect again? Your corrections will be replaced (undo cannot bring "
                    f"them back; the last autosave can).')) && trigger('{ctrl.trigger_name(app.detect)}')",
                    color="primary",
                )
                _button("Undo", "ik-undo", "mdi-undo", disabled="ik_busy || !ik_can_undo", click=app.undo)
                _button("Redo", "ik-redo", "mdi-redo", disabled="ik_busy || !ik_can_redo", click=app.redo)
                _button("Reset", "ik-reset", "mdi-restore", disabled="ik_busy || !ik_has_points", click=app.reset)
            with html.Div(classes="d-flex flex-wrap ga-2 mt-2"):
                _button(
                    "Next",
                    "ik-next",
                    "mdi-crosshairs-question",
                    disabled="!ik_has_points",
                    click=app.next_point,
                    title="Centre the view on the landmark the model is least sure of (not fixed yet)",
                )
                _button(
                    "Confirm",
                    "ik-confirm",
                    "mdi-check",
                    disabled="ik_next < 0",
                    click=app.confirm,
                    title="Accept the suggested landmark where it is: it becomes user-fixed and the model re-runs",
                )
                html.Span(
                    "{{ ik_next >= 0 ? 'check: ' + ik_rows[ik_next].name : '' }}",
                    id="ik-next-name",
                    classes="text-body-2 align-self-center",
                    style=f"color: {NEXT_COLOUR};",
                )
            with html.Div(classes="d-flex flex-wrap ga-2 mt-2"):
                # the browser saves what the server returns for the trigger, under the image's name
                _button(
                    ".mrk.json",
                    "ik-download-json",
                    "mdi-download",
                    disabled="!ik_has_points",
                    click=f"utils.download(ik_export_stem + '.mrk.json', trigger('{download_json}'), "
                    "'application/json')",
                    variant="outlined",
                )
                _button(
                    "CSV",
                    "ik-download-csv",
                    "mdi-download",
                    disabled="!ik_has_points",
                    click=f"utils.download(ik_export_stem + '.csv', trigger('{download_csv}'), 'text/csv')",
                    variant="outlined",
                )
            with html.Div(classes="d-flex flex-wrap ga-2 mt-2", v_show=("ik_training_set",)):
                _button(
                    "Add to training set",
                    "ik-add-to-set",
                    "mdi-school",
                    disabled="ik_busy || !ik_has_points",
                    click=app.add_to_training_set,
                    variant="outlined",
                    title="Save this image and its points into the server's training set; only the points you "
                    "moved or confirmed count as labels",
                )
                _button(
                    "Replace its points",
                    "ik-replace-in-set",
                    "mdi-swap-horizontal",
                    disabled="ik_busy",
                    click=lambda: app.add_to_training_set(replace=True),
                    variant="outlined",
                    v_show=("ik_training_duplicate",),
                )
            v3.VProgressLinear(indeterminate=True, v_show=("ik_busy",), id="ik-busy", classes="mt-2", color="primary")
            v3.VAlert(
                model_value=("!!ik_message",),  # not v-show: a closed VAlert would stay closed
                text=("ik_message",),
                type=("ik_message_type",),
                id="ik-message",
                density="compact",
                closable=True,
                click_close="ik_message = ''",
                classes="mt-2",
                style="word-break: break-word;",
            )
            with html.Div(classes="text-caption mt-2"):
                html.Span("\u25cf predicted ", style=f"color: {PREDICTED_COLOUR};")
                html.Span("\u25cf user-fixed ", style=f"color: {FIXED_COLOUR};")
                html.Span("\u25cf check next (halo) ", style=f"color: {NEXT_COLOUR};")
                html.Span("- drag a point to fix it; the others follow. Limits: {{ ik_limits }}.")
            # the autosave is this session's own file, offered as a download (the launcher serves it
            # to the browser the session was given to, also after the session has ended)
            with html.Div(v_show=("ik_autosave",), classes="text-caption", id="ik-autosave"):
                html.Span("Autosaved after every change: ")
                html.A(
                    "{{ ik_autosave }}",
                    href=("'autosaved/' + encodeURIComponent(ik_autosave)",),
                    download=("ik_autosave",),
                    id="ik-autosave-link",
                )
        with html.Div(v_show=("ik_measurements.length",), classes="px-3 pb-2", id="ik-measurements-panel"):
            v3.VDataTable(
                id="ik-measurements",
                headers=("ik_measurement_headers", MEASUREMENT_HEADERS),
                items=("ik_measurements",),
                item_value="measurement",
                density="compact",
                items_per_page=-1,
                hide_default_footer=True,
            )
            v3.VSelect(
                id="ik-measurement-select",
                label="Draw the lines of",
                v_model=("ik_measurement_selected",),
                items=("[''].concat(ik_measurement_names)",),
                density="compact",
                hide_details=True,
                classes="mt-1",
            )
        v3.VDataTable(
            id="ik-table",
            headers=("ik_headers", TABLE_HEADERS),
            items=("ik_rows",),
            item_value="index",
            row_props=("(row) => ({class: row.item.index === ik_next ? 'ik-next-row bg-red-lighten-5' : ''})",),
            density="compact",
            items_per_page=-1,
            hide_default_footer=True,
            fixed_header=True,
            height=(
                "ik_measurements.length ? 'calc(100vh - 330px - ' + (60 + 40 * ik_measurements.length) + 'px)' "
                ": 'calc(100vh - 330px)'",
            ),
            no_data_text="No landmarks yet: press Detect.",
        )
