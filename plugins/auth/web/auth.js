// A "Sign out" entry in the web UI's menu, loaded only when the server runs --auth password.
// It ends the session on the server (POST /auth/logout clears the cookie) and goes to the login page.
import { app } from "../../scripts/app.js";

const SIGN_OUT = "comfykernel.auth.signOut";

app.registerExtension({
  name: "comfykernel.auth",
  commands: [
    {
      id: SIGN_OUT,
      label: "Sign out",
      icon: "pi pi-sign-out",
      function: async () => {
        await fetch("/auth/logout", { method: "POST", credentials: "same-origin" });
        window.location.assign("/auth/login");
      },
    },
  ],
  menuCommands: [{ path: [], commands: [SIGN_OUT] }],
});
