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
