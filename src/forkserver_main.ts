// Entry point of the forkserver process (started by ForkServer with --single-threaded).
import './index';
import { serverMain } from './forkserver';

void serverMain();
