// Behaviour shared by every page: forms marked data-confirm ask first, in a dialog that names
// what will change (Enter confirms, Esc cancels). Without JavaScript the form simply submits.
(function () {
  "use strict";
  var dialog = document.getElementById("confirm-dialog");
  if (!dialog || typeof dialog.showModal !== "function") return;
  var pending = null;

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.dataset || !form.dataset.confirm || form.dataset.confirmed === "yes") return;
    event.preventDefault();
    pending = { form: form, submitter: event.submitter || null };
    document.getElementById("confirm-title").textContent = form.dataset.confirmTitle || "Are you sure?";
    document.getElementById("confirm-text").textContent = form.dataset.confirm;
    var ok = document.getElementById("confirm-ok");
    ok.textContent = form.dataset.confirmButton || "Confirm";
    ok.className = "btn " + (form.dataset.confirmDanger ? "btn-danger solid" : "btn-primary");
    var reasonField = document.getElementById("confirm-reason-field");
    var reasonInput = form.querySelector("input[name=reason]");
    reasonField.hidden = !reasonInput;
    document.getElementById("confirm-reason").value = reasonInput ? reasonInput.value : "";
    dialog.returnValue = "";
    dialog.showModal();
    ok.focus();
  }, true);

  dialog.addEventListener("close", function () {
    var chosen = pending;
    pending = null;
    if (!chosen || dialog.returnValue !== "ok") return;
    var reasonInput = chosen.form.querySelector("input[name=reason]");
    if (reasonInput) reasonInput.value = document.getElementById("confirm-reason").value;
    chosen.form.dataset.confirmed = "yes";
    chosen.form.requestSubmit(chosen.submitter || undefined);
  });
  document.body.dataset.confirmReady = "yes";
})();

// Forms marked data-submit-once (those that queue work: a run, a snapshot, an import, a key) send
// one request however often they are clicked: a double-click queued two training runs. The guard
// runs after the confirm dialog's (which cancels the first submit) and is lifted when the page is
// shown again from the back-forward cache, so the form can be sent again after "Back".
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (event.defaultPrevented || !form.dataset || form.dataset.submitOnce === undefined) return;
    if (form.dataset.submitting === "yes") {
      event.preventDefault();
      return;
    }
    form.dataset.submitting = "yes";
    form.setAttribute("aria-busy", "true");
  });
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-submitting]").forEach(function (form) {
      delete form.dataset.submitting;
      form.removeAttribute("aria-busy");
    });
  });
})();
