// basic_pack's frontend extension
import { app } from "../../scripts/app.js";
app.registerExtension({ name: "basic_pack.hello" });
